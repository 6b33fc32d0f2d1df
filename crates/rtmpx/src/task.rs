//! Memory per connection: a connection's task should hold only what its protocol needs now.
//!
//! An async fn's state keeps a slot for every future it awaits, and rustc also keeps one for a
//! future that is built inside it and then moved into a `Box` (storage for moved-out values is
//! not reused). So `Box::pin(session(..)).await` in an async fn still sizes that fn's state for
//! the whole session. [`boxed`] builds the future in a plain function, straight into its box:
//! the caller's state holds a pointer. The same goes for rare, large steps inside a long-lived
//! future (connect, publish and play decisions, which may wait for HTTP callbacks).

use std::future::Future;
use std::pin::Pin;

/// A boxed, sendable future (`T`: its output, `()` unless said).
pub type Boxed<'a, T = ()> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Builds the future `make` returns directly in a box.
pub fn boxed<'a, F>(make: impl FnOnce() -> F) -> Boxed<'a, F::Output>
where
    F: Future + Send + 'a,
{
    Box::pin(make())
}
