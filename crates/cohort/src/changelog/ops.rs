//! Rows cohort writes to the change log itself: a cache's clear and a tag invalidation.
//!
//! Triggers log keys of watched tables; a clear or a tag invalidation has no row of its own, yet
//! a node that misses it on the mesh must still apply it within the bound. So
//! [`Cache::clear`](crate::Cache::clear) and
//! [`Cache::invalidate_tag`](crate::Cache::invalidate_tag) append a row through
//! [`LogBackend::append`](super::LogBackend::append), in the same table, so that it is ordered,
//! tailed and pruned with the rest. The row's cache column is the cache's name behind
//! [`MARK`], which no cache name may start with, so that the row never reads as a key of a
//! cache, and older nodes, which know no cache by that name, skip it. The key column says what
//! to do: [`CLEAR`], or [`TAG`] followed by the tag.

/// Opens the cache column of a row cohort wrote itself.
pub(crate) const MARK: char = '\u{1}';

/// The key column of a clear.
const CLEAR: &str = "clear";

/// Opens the key column of a tag invalidation; the tag follows.
const TAG: &str = "tag:";

/// What a row cohort wrote asks of its cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CacheOp<'a> {
    /// Drop every entry.
    Clear,
    /// Drop every entry carrying the tag.
    Tag(&'a str),
    /// A kind this version does not know (written by a newer cohort): the cache cannot tell what
    /// changed, so it flushes.
    Unknown,
}

impl CacheOp<'_> {
    /// The (cache, key) columns of the row recording this operation on `cache`.
    pub(crate) fn columns(&self, cache: &str) -> (String, String) {
        let key = match self {
            CacheOp::Clear => CLEAR.to_owned(),
            CacheOp::Tag(tag) => format!("{TAG}{tag}"),
            CacheOp::Unknown => String::new(),
        };
        (format!("{MARK}{cache}"), key)
    }
}

/// A change-log row's (cache, key) columns, read as an operation on a cache if cohort wrote it:
/// `None` for a trigger's row.
pub(crate) fn parse<'a>(cache: &'a str, key: &'a str) -> Option<(&'a str, CacheOp<'a>)> {
    let cache = cache.strip_prefix(MARK)?;
    let op = if key == CLEAR {
        CacheOp::Clear
    } else if let Some(tag) = key.strip_prefix(TAG) {
        CacheOp::Tag(tag)
    } else {
        CacheOp::Unknown
    };
    Some((cache, op))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_round_trip_and_keys_stay_keys() {
        for op in [CacheOp::Clear, CacheOp::Tag("team:7"), CacheOp::Tag("")] {
            let (cache, key) = op.columns("users");
            assert_eq!(parse(&cache, &key), Some(("users", op)));
        }
        assert_eq!(parse("users", "clear"), None);
        assert_eq!(
            parse("\u{1}users", "drop"),
            Some(("users", CacheOp::Unknown))
        );
    }
}
