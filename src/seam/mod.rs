//! What the event loop and the app side share, and nothing else: the complete [`Request`](request::Request)
//! handed to the app, the [`Outbox`](outbox::Outbox) its response comes back through, and the
//! [`Notifier`](notifier::Notifier) that wakes the loop.

pub mod notifier;
pub mod outbox;
pub mod request;
