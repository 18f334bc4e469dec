//! Wire framing and parsing for the protocols Suture speaks. No I/O, no tokio.
