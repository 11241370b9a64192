from __future__ import annotations

import json

import pytest

from ingest.protocol import (
    FrameTooLarge,
    Handshake,
    ProtocolError,
    audio_ms,
    check_pcm_frame,
    parse_control,
    parse_handshake,
)


def handshake(**fields: object) -> str:
    return json.dumps({"type": "handshake", "source": "mic", **fields})


def reject(text: str) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_handshake(text, default_sample_rate=48000)
    return str(info.value)


class TestParseHandshake:
    def test_minimal_handshake_takes_defaults(self) -> None:
        hs = parse_handshake(handshake(), default_sample_rate=48000)
        assert hs == Handshake(
            type="handshake",
            source="mic",
            sample_rate=48000,
            channels=1,
            language="en",
            ai_mode="standard",
            device_id=None,
        )

    def test_default_sample_rate_comes_from_the_caller(self) -> None:
        assert parse_handshake(handshake(), default_sample_rate=16000).sample_rate == 16000

    def test_full_handshake(self) -> None:
        hs = parse_handshake(
            handshake(
                source="system",
                sample_rate=44100,
                channels=2,
                language="en-US",
                ai_mode="super",
                device_id="BlackHole 2ch",
            ),
            default_sample_rate=48000,
        )
        assert (hs.source, hs.sample_rate, hs.channels) == ("system", 44100, 2)
        assert (hs.language, hs.ai_mode, hs.device_id) == ("en-us", "super", "BlackHole 2ch")

    @pytest.mark.parametrize("rate", [8000, 16000, 48000])
    def test_sample_rate_bounds_are_inclusive(self, rate: int) -> None:
        assert parse_handshake(handshake(sample_rate=rate), default_sample_rate=48000)

    @pytest.mark.parametrize("language", ["EN", " tr ", "Auto", "zh-Hant-TW", "pt-BR"])
    def test_language_is_normalised_to_lowercase(self, language: str) -> None:
        hs = parse_handshake(handshake(language=language), default_sample_rate=48000)
        assert hs.language == language.strip().lower()

    def test_unknown_fields_are_ignored_for_forward_compatibility(self) -> None:
        hs = parse_handshake(handshake(client_version="2.1"), default_sample_rate=48000)
        assert not hasattr(hs, "client_version")
        assert hs.ignored == ("client_version",)  # and named, for the ready message

    def test_a_misspelled_field_is_named_among_the_ignored(self) -> None:
        text = json.dumps({"type": "handshake", "source": "mic", "sample_rte": 16000})
        hs = parse_handshake(text, default_sample_rate=48000)
        assert hs.sample_rate == 48000 and hs.ignored == ("sample_rte",)
        assert parse_handshake(handshake(), default_sample_rate=48000).ignored == ()

    def test_an_ignored_name_is_always_sendable(self) -> None:
        hs = parse_handshake(
            '{"type":"handshake","source":"mic","\\ud800x":1}', default_sample_rate=48000
        )
        assert hs.ignored == ("\\ud800x",)  # escaped: a lone surrogate cannot be UTF-8
        json.dumps(list(hs.ignored), ensure_ascii=False).encode()

    def test_ignored_names_are_bounded(self) -> None:
        fields = {f"x{i}" + "y" * 100: i for i in range(40)}
        hs = parse_handshake(handshake(**fields), default_sample_rate=48000)
        assert len(hs.ignored) == 16 and all(len(name) == 64 for name in hs.ignored)

    @pytest.mark.parametrize("text", ["", "{", "handshake", "{'type': 'handshake'}"])
    def test_malformed_json(self, text: str) -> None:
        assert reject(text) == "handshake is not valid JSON"

    def test_absurd_nesting_is_a_protocol_error_not_a_crash(self) -> None:
        assert reject("[" * 100_000) == "handshake's JSON is nested too deeply"

    @pytest.mark.parametrize("text", ["[]", '"handshake"', "42", "null"])
    def test_not_an_object(self, text: str) -> None:
        assert reject(text) == 'handshake must be a JSON object with a "type" field'

    @pytest.mark.parametrize("text", ['{"source": "mic"}', '{"type": "finalize"}', '{"type": 1}'])
    def test_wrong_or_missing_type(self, text: str) -> None:
        assert "the first message must be a handshake" in reject(text)

    def test_missing_source(self) -> None:
        assert reject('{"type": "handshake"}') == "invalid handshake: source is required"

    def test_null_is_not_given(self) -> None:
        # As many JSON encoders write an unset optional field.
        fields = ("sample_rate", "channels", "language", "ai_mode", "device_id")
        hs = parse_handshake(handshake(**dict.fromkeys(fields)), default_sample_rate=16000)
        given = (hs.sample_rate, hs.channels, hs.language, hs.ai_mode, hs.device_id)
        assert given == (16000, 1, "en", "standard", None)

    def test_a_repeated_key_is_refused(self) -> None:
        text = '{"type": "handshake", "source": "mic", "source": "system"}'
        assert reject(text) == 'handshake repeats the key "source"'
        # Inside a field the gateway does not know: the client's own business.
        nested = '{"type": "handshake", "source": "mic", "x": {"a": 1, "a": 2}}'
        assert parse_handshake(nested, default_sample_rate=16000).ignored == ("x",)

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ({"source": "speaker"}, 'source must be one of "mic", "system"'),
            ({"source": None}, "source is required"),  # null is not given
            ({"sample_rate": 7999}, "sample_rate must be an integer between 8000 and 48000"),
            ({"sample_rate": 96000}, "sample_rate must be an integer between 8000 and 48000"),
            ({"sample_rate": "16000"}, "sample_rate must be an integer between 8000 and 48000"),
            ({"sample_rate": 16000.0}, "sample_rate must be an integer between 8000 and 48000"),
            ({"channels": 0}, "channels must be 1 or 2"),
            ({"channels": 6}, "channels must be 1 or 2"),
            ({"channels": True}, "channels must be 1 or 2"),
            ({"channels": 1.0}, "channels must be 1 or 2"),
            ({"channels": "2"}, "channels must be 1 or 2"),
            ({"language": "english"}, "language must be a short language code"),
            ({"language": ""}, "language must be a short language code"),
            ({"language": "en_US"}, "language must be a short language code"),
            ({"language": 7}, "language must be a short language code"),
            ({"ai_mode": "turbo"}, 'ai_mode must be one of "standard", "super"'),
            ({"device_id": "x" * 257}, "device_id must be a string of at most 256 characters"),
            ({"device_id": 12}, "device_id must be a string of at most 256 characters"),
        ],
    )
    def test_bad_values_name_the_field_and_what_is_allowed(
        self, fields: dict[str, object], message: str
    ) -> None:
        text = reject(handshake(**fields))
        assert text.startswith("invalid handshake: ")
        assert message in text

    def test_every_bad_field_is_reported_once(self) -> None:
        text = reject(handshake(source="x", sample_rate=1, ai_mode="y"))
        assert text.count("source must") == 1
        assert "sample_rate must" in text
        assert "ai_mode must" in text

    def test_a_resumed_stream_says_where_its_audio_began(self) -> None:
        hs = parse_handshake(
            handshake(resumes={"stream_id": "ab12", "from_ms": 1500, "later": 1}),
            default_sample_rate=48000,
        )
        assert hs.resumes is not None
        assert (hs.resumes.stream_id, hs.resumes.from_ms) == ("ab12", 1500)

    @pytest.mark.parametrize(
        ("resumes", "says"),
        [
            ({"stream_id": "ab12"}, "resumes.from_ms is required"),
            ({"from_ms": 0}, "resumes.stream_id is required"),
            ({"stream_id": "ab12", "from_ms": -1}, "resumes must be"),
            ({"stream_id": "ab12", "from_ms": 1.5}, "resumes must be"),
            ({"stream_id": "", "from_ms": 0}, "resumes must be"),
            ("ab12", "resumes must be"),
        ],
    )
    def test_a_malformed_resumes_names_the_rule(self, resumes: object, says: str) -> None:
        assert says in reject(handshake(resumes=resumes))

    def test_a_key_repeated_inside_resumes_is_refused_too(self) -> None:
        text = '{"type": "handshake", "source": "mic", "resumes": {"stream_id": "a", '
        text += '"from_ms": 0, "from_ms": 5}}'
        assert 'repeats the key "from_ms"' in reject(text)

    def test_device_id_at_the_limit_is_accepted(self) -> None:
        hs = parse_handshake(handshake(device_id="x" * 256), default_sample_rate=48000)
        assert hs.device_id == "x" * 256


class TestParseControl:
    @pytest.mark.parametrize("kind", ["finalize", "close", "refresh", "ping"])
    def test_known_types(self, kind: str) -> None:
        assert parse_control(json.dumps({"type": kind})) == kind

    def test_extra_fields_are_ignored(self) -> None:
        assert parse_control('{"type": "close", "reason": "user"}') == "close"

    @pytest.mark.parametrize("text", ["", "finalize", "{"])
    def test_malformed_json(self, text: str) -> None:
        with pytest.raises(ProtocolError, match="control message is not valid JSON"):
            parse_control(text)

    @pytest.mark.parametrize("text", ["[]", '"close"'])
    def test_not_an_object(self, text: str) -> None:
        with pytest.raises(ProtocolError, match="must be a JSON object"):
            parse_control(text)

    @pytest.mark.parametrize(
        "text", ['{"type": "pause"}', '{"type": "handshake"}', "{}", '{"type": ["close"]}']
    )
    def test_unknown_type_lists_the_allowed_ones(self, text: str) -> None:
        with pytest.raises(ProtocolError) as info:
            parse_control(text)
        message = str(info.value)
        assert message.startswith("unknown control message type")
        assert 'allowed types: "finalize", "close"' in message

    def test_a_huge_type_is_not_echoed_in_full(self) -> None:
        with pytest.raises(ProtocolError) as info:
            parse_control(json.dumps({"type": "x" * 10_000}))
        assert len(str(info.value)) < 200


class TestCheckPcmFrame:
    def test_valid_frames(self) -> None:
        check_pcm_frame(b"\0" * 640, channels=1, max_bytes=32768)
        check_pcm_frame(b"\0" * 4, channels=2, max_bytes=4)

    def test_too_large(self) -> None:
        with pytest.raises(FrameTooLarge, match="PCM frame of 32770 bytes exceeds the limit"):
            check_pcm_frame(b"\0" * 32770, channels=1, max_bytes=32768)

    def test_too_large_is_a_protocol_error(self) -> None:
        assert issubclass(FrameTooLarge, ProtocolError)

    def test_empty(self) -> None:
        with pytest.raises(ProtocolError, match="empty PCM frame"):
            check_pcm_frame(b"", channels=1, max_bytes=100)

    def test_odd_length_mono(self) -> None:
        with pytest.raises(
            ProtocolError, match="PCM frame length 3 is not a whole number of 16-bit samples"
        ):
            check_pcm_frame(b"\0" * 3, channels=1, max_bytes=100)

    def test_odd_length_stereo(self) -> None:
        with pytest.raises(ProtocolError, match="length 5 is not a whole number of 16-bit"):
            check_pcm_frame(b"\0" * 5, channels=2, max_bytes=100)

    def test_half_a_stereo_frame(self) -> None:
        with pytest.raises(
            ProtocolError, match="length 6 is not a whole number of 2-channel 16-bit sample"
        ):
            check_pcm_frame(b"\0" * 6, channels=2, max_bytes=100)

    def test_size_is_checked_before_alignment(self) -> None:
        with pytest.raises(FrameTooLarge):
            check_pcm_frame(b"\0" * 101, channels=1, max_bytes=100)


@pytest.mark.parametrize(
    ("byte_count", "rate", "channels", "expected"),
    [
        (0, 16000, 1, 0),
        (32000, 16000, 1, 1000),
        (640, 16000, 1, 20),
        (192000, 48000, 2, 1000),
        (191, 48000, 2, 0),  # whole milliseconds, rounded down
        (3840, 48000, 2, 20),
    ],
)
def test_audio_ms(byte_count: int, rate: int, channels: int, expected: int) -> None:
    assert audio_ms(byte_count, rate, channels) == expected
