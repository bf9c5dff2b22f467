//! The QMP client lives in `ironbark-qmp`, shared with the SC; this module
//! keeps the NC's paths to it unchanged.

pub use ironbark_qmp::*;
