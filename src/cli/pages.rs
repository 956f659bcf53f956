//! Following page tokens for the list commands (`job list`, `backup list`,
//! `schedule list`): `--limit N` stops after N items, `--all` takes every
//! page, and by default one page is shown. When more items exist than
//! were shown, the caller prints [`Pages::hint`] on stderr: a list never
//! stops silently.

use anyhow::bail;
use clap::Args;

/// The paging flags every list command takes.
#[derive(Args, Debug, Clone, Default)]
pub struct Paging {
    /// Stop after N items (following pages as needed).
    #[arg(long, conflicts_with = "all", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
    /// List everything, following every page.
    #[arg(long)]
    pub all: bool,
    /// Items asked for per request (default: the server's page size).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub page_size: Option<u32>,
}

/// Where a listing is: the token of the next request, how many items were
/// kept, and whether more exist than were kept.
pub struct Pages {
    paging: Paging,
    token: String,
    kept: usize,
    pages: usize,
    started: bool,
    /// The server said there is more (a next page, or items past the limit).
    more: bool,
}

/// Most pages followed in one listing (a server that keeps answering with
/// pages is a bug, not a reason to loop for ever).
const MAX_PAGES: usize = 100_000;

impl Pages {
    pub fn new(paging: Paging) -> Pages {
        Pages {
            paging,
            token: String::new(),
            kept: 0,
            pages: 0,
            started: false,
            more: false,
        }
    }

    /// The page size and token of the next request, or `None` when the
    /// listing is complete (or stopped by the flags).
    pub fn next_request(&self) -> Option<(i32, String)> {
        let limit = self.paging.limit.map(|n| n as usize);
        if self.started {
            let wanted_more = match limit {
                Some(n) => self.kept < n,
                None => self.paging.all,
            };
            if self.token.is_empty() || !wanted_more {
                return None;
            }
        }
        let asked = self.paging.page_size.map(|n| n.max(1) as usize);
        let size = match (limit, asked) {
            (Some(n), Some(p)) => p.min(n - self.kept),
            (Some(n), None) => n - self.kept,
            (None, Some(p)) => p,
            // The server's default.
            (None, None) => 0,
        };
        Some((i32::try_from(size).unwrap_or(i32::MAX), self.token.clone()))
    }

    /// Adds a page's items to `out` (up to the limit) and remembers its
    /// next page token.
    pub fn add<T>(
        &mut self,
        items: Vec<T>,
        next_token: String,
        out: &mut Vec<T>,
    ) -> anyhow::Result<()> {
        if self.started && !next_token.is_empty() && next_token == self.token {
            bail!("the daemon answered the same page token twice ({next_token:?}); stopping");
        }
        self.started = true;
        let room = match self.paging.limit {
            Some(n) => (n as usize).saturating_sub(self.kept),
            None => usize::MAX,
        };
        let total = items.len();
        out.extend(items.into_iter().take(room));
        self.kept += total.min(room);
        self.more = !next_token.is_empty() || total > room;
        self.token = next_token;
        self.pages += 1;
        if self.pages >= MAX_PAGES && !self.token.is_empty() {
            bail!("more than {MAX_PAGES} pages; stopping");
        }
        Ok(())
    }

    /// Whether more items exist than were kept.
    pub fn more(&self) -> bool {
        self.more
    }

    /// What to tell the user when [`Pages::more`]: which flag shows more.
    pub fn hint(&self, what: &str) -> String {
        match self.paging.limit {
            Some(n) => format!(
                "custos: stopped at --limit {n}; more {what} exist: pass --all to list them all, or a larger --limit"
            ),
            None => format!(
                "custos: showing the first page ({} {what}); more exist: pass --all to list them all, or --limit N",
                self.kept
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake server of `n` items in pages of at most `max` (default 3).
    fn list(n: usize, paging: Paging) -> (Vec<usize>, bool, Vec<i32>) {
        let mut p = Pages::new(paging);
        let mut out = Vec::new();
        let mut sizes = Vec::new();
        while let Some((size, token)) = p.next_request() {
            sizes.push(size);
            let start: usize = if token.is_empty() {
                0
            } else {
                token.parse().unwrap()
            };
            let size = if size == 0 { 3 } else { size as usize };
            let end = (start + size).min(n);
            let next = if end < n {
                end.to_string()
            } else {
                String::new()
            };
            p.add((start..end).collect(), next, &mut out).unwrap();
        }
        (out, p.more(), sizes)
    }

    #[test]
    fn first_page_by_default_and_says_there_is_more() {
        let (items, more, sizes) = list(7, Paging::default());
        assert_eq!(items, vec![0, 1, 2]);
        assert!(more);
        assert_eq!(sizes, vec![0]);
        let (items, more, _) = list(3, Paging::default());
        assert_eq!(items.len(), 3);
        assert!(!more);
    }

    #[test]
    fn all_follows_every_page() {
        let all = Paging {
            all: true,
            page_size: Some(2),
            ..Default::default()
        };
        let (items, more, sizes) = list(7, all);
        assert_eq!(items, (0..7).collect::<Vec<_>>());
        assert!(!more);
        assert_eq!(sizes, vec![2, 2, 2, 2]);
    }

    #[test]
    fn limit_stops_after_n_across_pages() {
        let lim = |n, page_size| Paging {
            limit: Some(n),
            page_size,
            ..Default::default()
        };
        let (items, more, sizes) = list(7, lim(5, Some(2)));
        assert_eq!(items, vec![0, 1, 2, 3, 4]);
        assert!(more);
        assert_eq!(sizes, vec![2, 2, 1]);
        let (items, more, _) = list(7, lim(7, None));
        assert_eq!(items.len(), 7);
        assert!(!more, "exactly everything");
        let (items, more, _) = list(4, lim(10, None));
        assert_eq!(items.len(), 4);
        assert!(!more);
    }

    #[test]
    fn a_repeated_token_is_an_error() {
        let mut p = Pages::new(Paging {
            all: true,
            ..Default::default()
        });
        let mut out = Vec::new();
        p.add(vec![1], "t".into(), &mut out).unwrap();
        assert!(p.add(vec![2], "t".into(), &mut out).is_err());
    }
}
