//! The signing windows a thread last read out of cached URLs.
//!
//! Every cache hit checks that the cached URL is one this service would have signed for
//! the key, and reads its signing window from it ([`cos_sign::Endpoint::presigned_window`]):
//! about 400 instructions, a tenth of our own work on a redirect. A hot entry hands out
//! the same URL text (the same `Arc<str>`) hit after hit, so each thread remembers the
//! windows of the URLs it checked twice in a row, and a later hit on the same text for
//! the same key and service reuses the answer ([`url_cache::by_text::TextTable`]: a
//! remembered URL holds its `Arc`, so equal pointers mean equal text).
//!
//! What depends on the time (the pre-refresh threshold, the aligned window) is decided
//! afresh on every hit; only the parse is remembered.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cos_sign::{ObjectKey, SigningWindow};
use url_cache::by_text::TextTable;

/// Places per thread, found by the URL's address.
const WAYS: usize = 16;

/// A number of its own for each service, so that services with different endpoints
/// never share a thread's answers (an address could be reused by a later service).
pub(crate) fn next_service_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// URLs' windows as checked for one key by one service (`None`: not a URL the service
/// signs for the key), keyed by (service, key).
type Windows = TextTable<(u64, Box<str>), Option<SigningWindow>, WAYS>;

thread_local! {
    static WINDOWS: RefCell<Windows> = RefCell::new(Windows::new());
}

/// `url`'s window for `key` as `parse` reads it, remembered by this thread for
/// `service` (see the module's docs).
pub(crate) fn window_of(
    service: u64,
    key: &ObjectKey,
    url: &Arc<str>,
    parse: impl Fn() -> Option<SigningWindow>,
) -> Option<SigningWindow> {
    WINDOWS
        .try_with(|windows| {
            let Ok(mut windows) = windows.try_borrow_mut() else {
                return parse();
            };
            let is_key = |(s, k): &(u64, Box<str>)| *s == service && **k == *key.as_str();
            if let Some(window) = windows.get(url, is_key) {
                return window;
            }
            let window = parse();
            windows.seen(url, || (service, key.as_str().into()), &window);
            window
        })
        // The thread is ending: no place to remember in.
        .unwrap_or_else(|_| parse())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> ObjectKey {
        ObjectKey::new(text).unwrap()
    }

    /// Counts the parses `window_of` asks for.
    fn counted(
        parses: &std::cell::Cell<u32>,
        window: Option<SigningWindow>,
    ) -> impl Fn() -> Option<SigningWindow> + '_ {
        move || {
            parses.set(parses.get() + 1);
            window
        }
    }

    #[test]
    fn a_url_checked_twice_in_a_row_is_parsed_no_more() {
        let window = SigningWindow::new(100, 200).ok();
        let url: Arc<str> = "https://b.example/a.jpg?q-sign-time=100%3B200".into();
        let parses = std::cell::Cell::new(0);
        for _ in 0..5 {
            assert_eq!(
                window_of(1, &key("a.jpg"), &url, counted(&parses, window)),
                window
            );
        }
        assert_eq!(parses.get(), 2, "parsed until remembered");
    }

    /// The answer is for one text, one key and one service: the same text under another
    /// key or service, and equal text in another `Arc`, are parsed again.
    #[test]
    fn answers_are_never_lent_to_another_key_service_or_text() {
        let window = SigningWindow::new(100, 200).ok();
        let url: Arc<str> = "https://b.example/a.jpg?q-sign-time=100%3B200".into();
        let parses = std::cell::Cell::new(0);
        for _ in 0..2 {
            window_of(7, &key("a.jpg"), &url, counted(&parses, window));
        }
        assert_eq!(parses.get(), 2);
        // The parse for another key says what it says (here: not a URL for it).
        assert_eq!(
            window_of(7, &key("b.jpg"), &url, counted(&parses, None)),
            None
        );
        assert_eq!(
            window_of(8, &key("a.jpg"), &url, counted(&parses, None)),
            None
        );
        let copy: Arc<str> = Arc::from(&*url);
        assert_eq!(
            window_of(7, &key("a.jpg"), &copy, counted(&parses, None)),
            None
        );
        assert_eq!(parses.get(), 5);
    }
}
