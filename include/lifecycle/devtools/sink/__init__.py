"""A local SendGrid-compatible server for development, tests and benchmarks (`lifecycle sink`).

- `app`: the aiohttp application: `POST /v3/mail/send`, the `/_sink/...` inspection and
  fault-injection routes, and `serve` for the `lifecycle sink` command;
- `validation`: SendGrid's rules for a mail/send body, with its 400 messages;
- `suppressions`: SendGrid's suppression endpoints, emulated in memory;
- `thread`: `run_sink_in_thread`, a sink on a free loopback port for in-process tests.
"""
