"""Speech engines: the interface (`base`), the offline `local` engine and the cloud engines."""
