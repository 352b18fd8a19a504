//! The codec every generated Tether stub uses: prost encoding with 1 KiB starting buffers.
//!
//! tonic keeps one encode and one decode buffer per stream, 8 KiB each by default. An agent
//! session holds its stream for days while exchanging messages of a few hundred bytes, so at
//! 10,000 sessions the default buffers alone cost ~160 MiB. Buffers still grow on demand for a
//! larger message. This is configuration of the generated code, which is why it lives here.

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Starting size of a stream's encode and decode buffers.
pub const BUFFER_SIZE: usize = 1024;
/// tonic's default: how much encoded data a stream writes before yielding.
pub const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers.
#[derive(Debug, Clone, Default)]
pub struct SmallBufferCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD))
    }
}
