//! Era translation: clients and servers of different protocol eras through one proxy.
//!
//! **Modern client → session-based server** (2026-07-28 requests for a route whose server is a
//! stdio child, an HTTP+SSE server, or a Streamable HTTP server that does not answer
//! `server/discover`): the proxy holds a session-based session with the server ([`held`]) and
//! maps each stateless request onto it (the HTTP front's `translated` module, which also keeps
//! the pool of held sessions: who shares one). Nothing here imports a front.
//! `server/discover` is answered from the held session's `InitializeResult`;
//! `subscriptions/listen` is served from its notifications (resource subscriptions become
//! `resources/subscribe` while someone listens); results gain `resultType`, the `serverInfo`
//! stamp and cache hints; the server's `sampling/createMessage` and `elicitation/create` during
//! a request become a multi-round-trip `InputRequiredResult` ([`mrtr`]). Not translatable, and
//! what the client gets then:
//! * server→client requests not related to a request that may take input, and `roots/list`
//!   (the held session does not declare `roots`): the server gets `-32601` from the proxy, the
//!   client whatever the server then answers its request.
//! * client notifications: absorbed with `202` (2026-07-28 has none on HTTP); cancellation is
//!   closing the response, which the proxy turns into `notifications/cancelled`.
//! * `initialize` sent with the 2026-07-28 header: `400` + `-32600`.
//! * tape replays: `-32022` listing the session-based versions (a tape is a recorded session).
//!
//! **Session-based client → modern-only server** (a Streamable HTTP server that refuses
//! `initialize` with a 2026-era error): the session's HTTP upstream switches to its stateless
//! mode ([`crate::upstream`]'s `stateless/`): `initialize` is answered from the server's
//! `server/discover` ([`handshake::initialize_result`]), `notifications/initialized` is absorbed,
//! every request is POSTed on its own with the 2026-07-28 headers and `_meta` envelope
//! ([`envelope::wrap_request`]), `ping` and `logging/setLevel` are answered by the proxy (the
//! level then rides in each request's `_meta`), the client's GET stream is fed by a
//! `subscriptions/listen` request, and `notifications/cancelled` closes the request's POST.

pub mod envelope;
pub mod handshake;
pub mod held;
pub mod mrtr;
