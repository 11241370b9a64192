"""Webhooks' pure parts with plain values: signatures against the Standard Webhooks reference
verifier, the address policy, resolving once, the retry schedule, URL rules, WEBHOOKS_FILE."""

from __future__ import annotations

import ipaddress
import json
import random
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.webhooks.addresses import AddressRefused, checked_address, refusal
from gateway.webhooks.endpoints_file import EndpointsFileError, load_endpoints_file
from gateway.webhooks.schedule import next_attempt, retry_delay_s
from gateway.webhooks.signing import signed_headers
from gateway.webhooks.urls import check_url, normalized_url
from store.webhooks import EVENT_TYPES, Endpoint, Event, new_secret


def test_signatures_verify_with_the_reference_algorithm() -> None:
    secret = new_secret()
    body = Event("meeting.ended", "acme", "m1").body()
    headers = signed_headers([secret], "msg_1", int(time.time()), body)
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)  # another endpoint's secret
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("m1", "m2"), headers)  # a changed body
    stale = signed_headers([secret], "msg_1", int(time.time()) - 3600, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, stale)  # an old timestamp (replay)


def test_during_a_rotation_either_secret_verifies_and_after_it_only_the_new_one() -> None:
    old, new = new_secret(), new_secret()
    at = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    endpoint = Endpoint(
        "ep_1",
        "acme",
        "https://hooks.example.com/",
        ("meeting.ended",),
        new,
        None,
        "api",
        at,
        previous_secrets=((old, at + timedelta(hours=24)),),
    )
    body = Event("meeting.ended", "acme", "m1").body()
    during = signed_headers(endpoint.signing_secrets(at), "msg_1", int(time.time()), body)
    assert len(during["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(body, during) == json.loads(body)
    after = endpoint.signing_secrets(at + timedelta(hours=24))
    assert after == (new,)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, signed_headers(after, "msg_1", int(time.time()), body))


def test_the_specifications_example_signature() -> None:
    # The published test vector of the Standard Webhooks reference libraries (a public example,
    # not a credential of ours).
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = '{"test": 2432232314}'
    headers = signed_headers([secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_body_carries_ids_and_states_only() -> None:
    at = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
    body = json.loads(Event("recording.failed", "acme", "m1", {"job_id": "j1"}, at).body())
    assert body == {
        "type": "recording.failed",
        "timestamp": "2026-12-04T09:00:00+00:00",
        "data": {"tenant_id": "acme", "meeting_id": "m1", "job_id": "j1"},
    }


REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # carrier-grade NAT
    "0.0.0.0",
    "224.0.0.1",
    "::1",
    "fc00::1",
    "fe80::1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:10.0.0.1",
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of the cloud metadata address
    "64:ff9b:1::a00:1",  # a local NAT64 prefix
    "2002:c0a8:1::1",  # 6to4 of 192.168.0.1
    "::a00:1",  # IPv4-compatible 10.0.0.1
    "::ffff:0:7f00:1",  # IPv4-translated (SIIT) 127.0.0.1
    "::ffff:0:a9fe:a9fe",  # IPv4-translated cloud metadata address
    "192.0.0.8",  # the IPv4 dummy address (an IETF protocol assignment)
]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is not None


def test_ipv6_loopback_is_named_as_such() -> None:
    assert refusal(ipaddress.ip_address("::1")) == "::1 is a loopback address"
    assert "reaches" not in (refusal(ipaddress.ip_address("::")) or "reaches")


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::101:101", "::ffff:0:101:101"],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


async def test_a_host_is_resolved_once_and_every_answer_checked() -> None:
    calls: list[str] = []
    answers = {"hooks.example": ["93.184.216.34"], "mixed.example": ["93.184.216.34", "10.0.0.7"]}

    async def resolver(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[host]

    assert await checked_address("hooks.example", 443, allow_private=False, resolver=resolver) == (
        "93.184.216.34"
    )
    with pytest.raises(AddressRefused, match=re.escape("10.0.0.7 is a private address")):
        await checked_address("mixed.example", 443, allow_private=False, resolver=resolver)
    assert calls == ["hooks.example", "mixed.example"]
    # A literal address is not resolved at all; allowed ones pass with the setting.
    with pytest.raises(AddressRefused, match="loopback"):
        await checked_address("127.0.0.1", 80, allow_private=False, resolver=resolver)
    assert await checked_address("127.0.0.1", 80, allow_private=True, resolver=resolver) == (
        "127.0.0.1"
    )
    assert calls == ["hooks.example", "mixed.example"]


async def test_a_host_that_does_not_resolve_is_refused() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        raise OSError(-2, "Name or service not known")

    with pytest.raises(AddressRefused, match="does not resolve"):
        await checked_address("nope.invalid", 443, allow_private=True, resolver=resolver)


async def test_a_name_the_resolver_cannot_encode_is_refused() -> None:
    """The system resolver encodes a name with IDNA before asking, which raises UnicodeError
    for an empty or too long label (a stored endpoint checked before labels were)."""
    for host in ("a..example", f"{'a' * 64}.example"):
        with pytest.raises(AddressRefused, match="not a valid host name"):
            await checked_address(host, 443, allow_private=True)


def test_retries_back_off_exponentially_and_give_up_after_max_age() -> None:
    rng = random.Random(7)
    steps = [retry_delay_s(n, base_s=5, cap_s=3600, rng=rng) for n in range(1, 14)]
    for n, delay in enumerate(steps, start=1):
        step = min(3600, 5 * 2 ** (n - 1))
        assert 0.5 * step <= delay <= step
    created = datetime(2026, 12, 4, tzinfo=UTC)
    kw = {"base_s": 5.0, "cap_s": 3600.0, "max_age_s": 86400.0, "rng": rng}
    soon = next_attempt(1, created_at=created, now=created + timedelta(seconds=1), **kw)
    assert soon is not None and soon - created < timedelta(seconds=7)
    # A retry that would fall past the day is made at its end, once; then it is given up.
    late = created + timedelta(hours=23, minutes=30)
    assert next_attempt(30, created_at=created, now=late, **kw) == created + timedelta(days=1)
    assert next_attempt(31, created_at=created, now=created + timedelta(days=1), **kw) is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://hooks.example/x", "http:// or https://"),
        ("https:///x", "must name a host"),
        ("https://user:pw@hooks.example/x", "credentials"),
        ("https://hooks.example:99999/x", "not a valid URL"),
        ("https://hooks.example:0/x", "port 0"),
        ("https://hooks.example/x#frag", "fragment"),
        ("https://93.184.215.14/hook\x01", "control characters"),
        ("https://hooks.example/a b", "spaces"),
        ("https://a..example/x", "valid host"),
        (f"https://{'a' * 64}.example/x", "valid host"),
    ],
)
def test_bad_urls_are_named(url: str, problem: str) -> None:
    reason = check_url(url)
    assert reason is not None and problem in reason
    assert check_url("https://hooks.example/mg?tenant=1") is None


def test_the_endpoints_file(tmp_path: Path) -> None:
    path = tmp_path / "webhooks.json"
    secret = new_secret()
    entry = {"tenant": "acme", "url": "https://hooks.example/mg", "secret": secret}
    path.write_text(json.dumps({"endpoints": [entry]}))
    (endpoint,) = load_endpoints_file(path, allow_private=False)
    assert endpoint.events == EVENT_TYPES and endpoint.source == "file"
    assert (
        load_endpoints_file(path, allow_private=False)[0].endpoint_id == endpoint.endpoint_id
    )  # stable
    # A description written over lines (it loaded before the one-line rule) is one line.
    path.write_text(json.dumps([{**entry, "description": "Our CRM,\n\tsales  team"}]))
    (endpoint,) = load_endpoints_file(path, allow_private=False)
    assert endpoint.description == "Our CRM, sales team"
    for broken, message in [
        ({**entry, "secret": None}, "`secret`"),
        ({**entry, "secret": "whsec_!!"}, "whsec_ and the base64"),
        # Looser than the API, which refuses each (a typo left every event subscribed).
        ({**entry, "secret": "whsec_aGVsbG8="}, "of 24 random bytes or more"),
        ({**entry, "secret": secret.removeprefix("whsec_")}, "whsec_ and the base64"),
        ({**entry, "event": ["meeting.ended"]}, "unknown field.s. 'event'; fields are tenant"),
        ({**entry, "description": "x" * 201}, "`description` must be a string of at most 200"),
        ({**entry, "description": "a\u0007b"}, "`description` must not hold control"),
        ({**entry, "description": "a\u202eb"}, "`description` holds a bidi"),
        ({**entry, "url": "gopher://x"}, "`url` must be an http"),
        ({**entry, "events": ["meeting.exploded"]}, "`events` must be"),
        ({**entry, "tenant": ""}, "`tenant` is required"),
        ({**entry, "tenant": "bad tenant"}, "`tenant` must be"),
        ({**entry, "url": "http://127.0.0.1:9/h"}, "127.0.0.1 is a loopback address"),
        ({**entry, "url": "https://[fd00::1]/h"}, "fd00::1 is a private address"),
        ({**entry, "url": "http://10.1.2.3/h"}, "public addresses only .WEBHOOKS_ALLOW_PRIVATE"),
        ({**entry, "url": "http://127.1:9/h"}, "127.0.0.1 is a loopback address"),
        ({**entry, "url": "http://2130706433/h"}, "127.0.0.1 is a loopback address"),
        ({**entry, "url": "http://localhost:9/h"}, "localhost is a loopback name"),
        ({**entry, "url": "http://api.localhost./h"}, "api.localhost is a loopback name"),
    ]:
        path.write_text(json.dumps([broken]))
        with pytest.raises(EndpointsFileError, match=message):
            load_endpoints_file(path, allow_private=False)
    # An operator who means an internal receiver says so; a name is checked at each delivery.
    for url, allow_private in [
        ("http://10.1.2.3/h", True),
        ("http://localhost:9/h", True),
        ("http://hooks.internal.example/h", False),
    ]:
        path.write_text(json.dumps([{**entry, "url": url}]))
        allowed = load_endpoints_file(path, allow_private=allow_private)
        assert allowed[0].url == url
    path.write_text(json.dumps([entry, {**entry, "events": ["meeting.ended"]}]))
    with pytest.raises(EndpointsFileError, match="endpoint 1: the same tenant and url"):
        load_endpoints_file(path, allow_private=False)
    path.write_text("{not json")
    with pytest.raises(EndpointsFileError, match="cannot be read as JSON"):
        load_endpoints_file(path, allow_private=False)


@pytest.mark.parametrize(
    ("url", "stored"),
    [
        ("https://hooks.example/mg", "https://hooks.example/mg"),
        ("HTTPS://Hooks.Example/mg", "https://hooks.example/mg"),  # the path keeps its case
        ("https://hooks.example:443/Mg", "https://hooks.example/Mg"),
        ("http://hooks.example:80/mg", "http://hooks.example/mg"),
        ("http://hooks.example:/mg", "http://hooks.example/mg"),
        ("http://hooks.example:08080/mg", "http://hooks.example:8080/mg"),
        ("https://hooks.example:80/mg", "https://hooks.example:80/mg"),
        ("https://hooks.example", "https://hooks.example/"),
        ("https://hooks.example/mg?", "https://hooks.example/mg"),
        ("https://hooks.example/mg?a=1&B=2", "https://hooks.example/mg?a=1&B=2"),
        ("http://[2001:DB8::1]:8080/h", "http://[2001:db8::1]:8080/h"),
        ("http://[2001:db8::1]:80/h", "http://[2001:db8::1]/h"),
    ],
)
def test_one_url_spelled_two_ways_is_stored_one_way(url: str, stored: str) -> None:
    assert check_url(url) is None
    assert normalized_url(url) == stored
    assert check_url(stored) is None and normalized_url(stored) == stored
