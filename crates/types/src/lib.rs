//! Vocabulary shared by every ironbark role: newtype ids, the domain records the
//! cloud controller keeps, and [`Error`], the one public error type.
//!
//! Nothing here does I/O. Requests are parsed by the API crates into these
//! types, the application layer (`ironbark-clc`) works on them, the store
//! persists them, and at the edge an [`Error`] becomes the AWS error code a
//! real client expects (see [`ErrorKind::aws_code`]).

pub mod error;
pub mod filter;
pub mod ids;
pub mod model;
pub mod net;

pub use error::{Error, ErrorKind, Result};
pub use filter::{Filter, Filterable};
pub use ids::*;
pub use model::*;
pub use net::{Ipv4Cidr, Protocol};
