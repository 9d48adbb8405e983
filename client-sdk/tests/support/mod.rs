//! Helpers shared by the integration tests.

pub(crate) mod in_process;
pub(crate) mod proxy;

/// Runs `async fn name(t: Transport)` as `name::tcp`, `name::tls` and
/// `name::quic` (`Transport` is `in_process::Transport`, in scope where it
/// is used).
#[allow(unused_macros)]
macro_rules! over_transports {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tcp() {
                super::$name(super::Transport::Tcp).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tls() {
                super::$name(super::Transport::Tls).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn quic() {
                super::$name(super::Transport::Quic).await
            }
        }
    )+};
}
