//! Rating: what a message costs. Segments (as Twilio counts them) times the
//! customer rate of the destination country, from a rate table that is data.

pub mod quote;
pub mod rates;
pub mod segments;

pub use quote::{quote, quote_to, Quote, QuoteRequest, RatingError, SmartEncodingQuote};
pub use rates::{Rate, RateTable, RateTableError};
pub use segments::{count_segments, smart_encode, Encoding, SegmentCount};
