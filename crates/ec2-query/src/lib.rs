//! The EC2 Query API edge of the CLC.
//!
//! A request arrives as form parameters (from a POST body or a GET query
//! string). [`Params`] decodes them, [`handle`] reads the `Action` and
//! `Version`, parses the action's parameters into typed arguments, calls the
//! one matching method of [`ironbark_clc::Cloud`], and renders the result as
//! the XML EC2 returns (namespaced by the requested API version, with
//! `requestId` and `<item>` lists). Failures come back as an
//! [`ironbark_types::Error`], which [`render_error`] turns into EC2's error
//! document. Nothing here decides anything about the cloud.

mod actions;
mod params;
pub mod xml;

pub use actions::handle;
pub use params::{Params, parse_form};

/// The API versions ironbark answers to, inclusive. Eucalyptus-era tools
/// send 2010-08-31 … 2014-xx; current botocore sends 2016-11-15.
pub const OLDEST_VERSION: &str = "2010-08-31";
pub const NEWEST_VERSION: &str = "2016-11-15";

/// EC2's error document.
pub fn render_error(e: &ironbark_types::Error, request_id: &str) -> String {
    let mut w = xml::Writer::new();
    w.raw("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    w.open("Response");
    w.open("Errors");
    w.open("Error");
    w.elem("Code", e.kind.aws_code());
    w.elem("Message", &e.message);
    w.close("Error");
    w.close("Errors");
    w.elem("RequestID", request_id);
    w.close("Response");
    w.finish()
}
