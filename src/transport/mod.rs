//! The only code that touches sockets: the TCP data channel and the ZeroMQ return channel.

pub mod tcp;
pub mod zmq;
