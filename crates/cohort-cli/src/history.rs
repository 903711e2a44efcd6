//! The staleness checker `cohort check` and `cohort demo` judge their histories with: the test
//! kit's, which the simulations use too, so that every history is held to one rule.

pub(crate) use cohort_testkit::history::{Judge, Late, Read, Update, Verdict, judge};
