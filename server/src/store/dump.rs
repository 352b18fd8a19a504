//! The backup file: every record of a store, in one self-checking file. Pure encoding, no
//! store: `store/sled/export.rs` produces the records, `backup.rs` moves the files.
//!
//! # Layout
//!
//! ```text
//! MAGIC                      "TETHER-BACKUP\n" (14 bytes)
//! u32 format                 FORMAT
//! u32 n, n bytes             Header (JSON)
//! per record:  u8 1, u16 n + space, u32 n + key, u32 n + value
//! end:         u8 0, u64 records
//! 32 bytes                   SHA-256 of every byte above
//! ```
//!
//! Integers are big-endian. **Invariant:** [`verify`] checks the length and the checksum of the
//! whole file before [`Reader`] believes any of it, so a truncated, cut or altered file is
//! refused before a single record is written anywhere; decoding never panics and never
//! allocates more than the file holds.

use std::io::{Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

/// The first bytes of every backup file.
pub const MAGIC: &[u8; 14] = b"TETHER-BACKUP\n";
/// The version of this layout.
pub const FORMAT: u32 = 1;
/// Bytes of the checksum at the end.
const DIGEST_BYTES: u64 = 32;
/// Longest header accepted.
const MAX_HEADER_BYTES: u32 = 64 * 1024;
/// Smallest possible file: magic, format, an empty header, the end and the digest.
const MIN_BYTES: u64 = MAGIC.len() as u64 + 4 + 4 + 1 + 8 + DIGEST_BYTES;

/// What a backup file says about itself.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    /// The store schema version of its records.
    pub schema_version: u32,
    /// The version of the `tether-server` that wrote it.
    pub server_version: String,
    /// When its records were read, RFC 3339.
    pub taken_at: String,
}

/// One record as read back: (space, key, value).
pub type RecordParts = (Vec<u8>, Vec<u8>, Vec<u8>);

/// What a finished file holds, to check a copy of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub bytes: u64,
    pub records: u64,
    /// SHA-256 of the whole file, its trailing checksum included: what `sha256sum` prints.
    pub sha256: [u8; 32],
}

/// Why a file is not a readable backup.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a Tether backup file (it does not start with the backup's magic bytes)")]
    NotABackup,
    #[error("backup file format {0} (this server reads {FORMAT})")]
    Format(u32),
    #[error("truncated: {0} bytes is too short for a backup file")]
    TooShort(u64),
    #[error(
        "checksum mismatch: the file is truncated or damaged (a copy cut short, or bytes \
         changed); use another copy"
    )]
    Checksum,
    #[error("damaged after a valid checksum (at byte {offset}): {detail}")]
    Malformed { offset: u64, detail: String },
}

// === impl Writer ===

/// Writes a backup file: [`Writer::new`], a [`Writer::record`] per record, [`Writer::finish`].
pub struct Writer<W: Write> {
    out: W,
    hasher: Sha256,
    bytes: u64,
    records: u64,
}

impl<W: Write> Writer<W> {
    /// Starts a file with `header`.
    ///
    /// # Errors
    ///
    /// `out`'s.
    pub fn new(out: W, header: &Header) -> std::io::Result<Self> {
        let mut writer = Self {
            out,
            hasher: Sha256::new(),
            bytes: 0,
            records: 0,
        };
        let header = serde_json::to_vec(header).expect("a header serializes");
        writer.put(MAGIC)?;
        writer.put(&FORMAT.to_be_bytes())?;
        writer.put(&len_u32(header.len())?.to_be_bytes())?;
        writer.put(&header)?;
        Ok(writer)
    }

    /// Appends one record.
    ///
    /// # Errors
    ///
    /// `out`'s; `InvalidInput` for a space over 64 KiB or a key or value over 4 GiB.
    pub fn record(&mut self, space: &[u8], key: &[u8], value: &[u8]) -> std::io::Result<()> {
        let space_len = u16::try_from(space.len())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "space name"))?;
        self.put(&[1])?;
        self.put(&space_len.to_be_bytes())?;
        self.put(space)?;
        self.put(&len_u32(key.len())?.to_be_bytes())?;
        self.put(key)?;
        self.put(&len_u32(value.len())?.to_be_bytes())?;
        self.put(value)?;
        self.records += 1;
        Ok(())
    }

    /// Ends the file with its record count and checksum, flushes, and gives `out` back.
    ///
    /// # Errors
    ///
    /// `out`'s.
    pub fn finish(mut self) -> std::io::Result<(W, Summary)> {
        self.put(&[0])?;
        self.put(&self.records.to_be_bytes())?;
        let mut whole = self.hasher.clone();
        let digest: [u8; 32] = self.hasher.finalize().into();
        self.out.write_all(&digest)?;
        self.out.flush()?;
        whole.update(digest);
        let summary = Summary {
            bytes: self.bytes + DIGEST_BYTES,
            records: self.records,
            sha256: whole.finalize().into(),
        };
        Ok((self.out, summary))
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }
}

fn len_u32(len: usize) -> std::io::Result<u32> {
    u32::try_from(len).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "record"))
}

// === reading ===

/// Checks that `file` is a whole backup file: magic, format, length and checksum. Reads it
/// once, from the start; leaves the position anywhere.
///
/// # Errors
///
/// Every [`DumpError`] but `Malformed`.
pub fn verify<R: Read + Seek>(file: &mut R) -> Result<Summary, DumpError> {
    let len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let mut magic = [0; MAGIC.len()];
    let got = read_up_to(file, &mut magic)?;
    if got < MAGIC.len() || &magic != MAGIC {
        return Err(DumpError::NotABackup);
    }
    let mut format = [0; 4];
    if read_up_to(file, &mut format)? < 4 {
        return Err(DumpError::TooShort(len));
    }
    let format = u32::from_be_bytes(format);
    if format != FORMAT {
        return Err(DumpError::Format(format));
    }
    if len < MIN_BYTES {
        return Err(DumpError::TooShort(len));
    }
    file.seek(SeekFrom::Start(0))?;
    let mut hasher = Sha256::new();
    let hashed = std::io::copy(
        &mut file.by_ref().take(len - DIGEST_BYTES),
        &mut HashWriter(&mut hasher),
    )?;
    let mut digest = [0; DIGEST_BYTES as usize];
    if hashed != len - DIGEST_BYTES || read_up_to(file, &mut digest)? < digest.len() {
        return Err(DumpError::TooShort(len));
    }
    let mut whole = hasher.clone();
    let computed: [u8; 32] = hasher.finalize().into();
    if computed != digest {
        return Err(DumpError::Checksum);
    }
    whole.update(digest);
    Ok(Summary {
        bytes: len,
        records: 0,
        sha256: whole.finalize().into(),
    })
}

/// Reads the records of a file [`verify`] accepted.
pub struct Reader<R: Read> {
    input: R,
    offset: u64,
    records: u64,
    done: bool,
}

impl<R: Read> Reader<R> {
    /// Reads the start of `input` (positioned at the file's first byte) up to the first record.
    ///
    /// # Errors
    ///
    /// `Malformed` or `Io`.
    pub fn new(input: R) -> Result<(Self, Header), DumpError> {
        let mut reader = Self {
            input,
            offset: 0,
            records: 0,
            done: false,
        };
        let magic = reader.take(MAGIC.len() as u32)?;
        if magic != MAGIC {
            return Err(DumpError::NotABackup);
        }
        let format = reader.u32()?;
        if format != FORMAT {
            return Err(DumpError::Format(format));
        }
        let n = reader.u32()?;
        if n > MAX_HEADER_BYTES {
            return Err(reader.malformed(format!("header of {n} bytes")));
        }
        let raw = reader.take(n)?;
        let header = serde_json::from_slice(&raw).map_err(|e| reader.malformed(e.to_string()))?;
        Ok((reader, header))
    }

    /// The next record as (space, key, value), or `None` after the last one (whose count is
    /// checked).
    ///
    /// # Errors
    ///
    /// `Malformed` or `Io`.
    pub fn next_record(&mut self) -> Result<Option<RecordParts>, DumpError> {
        if self.done {
            return Ok(None);
        }
        match self.take(1)?[0] {
            0 => {
                let mut count = [0; 8];
                self.fill(&mut count)?;
                let count = u64::from_be_bytes(count);
                if count != self.records {
                    return Err(
                        self.malformed(format!("{} records, the end says {count}", self.records))
                    );
                }
                self.done = true;
                Ok(None)
            }
            1 => {
                let mut space_len = [0; 2];
                self.fill(&mut space_len)?;
                let space = self.take(u32::from(u16::from_be_bytes(space_len)))?;
                let n = self.u32()?;
                let key = self.take(n)?;
                let n = self.u32()?;
                let value = self.take(n)?;
                self.records += 1;
                Ok(Some((space, key, value)))
            }
            tag => Err(self.malformed(format!("unknown tag {tag}"))),
        }
    }

    fn u32(&mut self) -> Result<u32, DumpError> {
        let mut raw = [0; 4];
        self.fill(&mut raw)?;
        Ok(u32::from_be_bytes(raw))
    }

    /// Reads `n` bytes, growing the buffer only as bytes arrive (a length field never makes
    /// it allocate more than the input holds).
    fn take(&mut self, n: u32) -> Result<Vec<u8>, DumpError> {
        let mut out = Vec::new();
        let got = (&mut self.input).take(u64::from(n)).read_to_end(&mut out)?;
        self.offset += got as u64;
        if got != n as usize {
            return Err(self.malformed(format!("{n} bytes announced, {got} left")));
        }
        Ok(out)
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<(), DumpError> {
        let got = read_up_to(&mut self.input, buf)?;
        self.offset += got as u64;
        if got < buf.len() {
            return Err(self.malformed("the file ends inside a record".to_owned()));
        }
        Ok(())
    }

    fn malformed(&self, detail: String) -> DumpError {
        DumpError::Malformed {
            offset: self.offset,
            detail,
        }
    }
}

/// Reads until `buf` is full or the input ends; returns how many bytes were read.
fn read_up_to<R: Read>(input: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    type Records = Vec<RecordParts>;

    fn header() -> Header {
        Header {
            schema_version: 3,
            server_version: "0.1.0".to_owned(),
            taken_at: "2026-01-01T00:00:00Z".to_owned(),
        }
    }

    fn file(records: &Records) -> (Vec<u8>, Summary) {
        let mut writer = Writer::new(Vec::new(), &header()).expect("start");
        for (space, key, value) in records {
            writer.record(space, key, value).expect("record");
        }
        writer.finish().expect("finish")
    }

    fn read_all(bytes: &[u8]) -> Result<(Header, Records), DumpError> {
        verify(&mut Cursor::new(bytes))?;
        let (mut reader, header) = Reader::new(Cursor::new(bytes))?;
        let mut out = Vec::new();
        while let Some(record) = reader.next_record()? {
            out.push(record);
        }
        Ok((header, out))
    }

    fn sample() -> Records {
        vec![
            (b"data".to_vec(), b"acme/a/a-1".to_vec(), b"{}".to_vec()),
            (b"log".to_vec(), 7u64.to_be_bytes().to_vec(), vec![0; 300]),
            (b"meta".to_vec(), b"schema_version".to_vec(), b"3".to_vec()),
            (b"meta".to_vec(), Vec::new(), Vec::new()),
        ]
    }

    #[test]
    fn records_read_back_as_written_and_the_summary_describes_the_file() {
        let records = sample();
        let (bytes, summary) = file(&records);
        assert_eq!(summary.bytes, bytes.len() as u64);
        assert_eq!(summary.records, records.len() as u64);
        let checked = verify(&mut Cursor::new(&bytes)).expect("verify");
        assert_eq!(checked.sha256, summary.sha256);
        let whole: [u8; 32] = Sha256::digest(&bytes).into();
        assert_eq!(summary.sha256, whole, "the whole file's hash");
        assert_eq!(read_all(&bytes).expect("read"), (header(), records));
        assert_eq!(read_all(&file(&Vec::new()).0).expect("empty").1, Vec::new());
    }

    #[test]
    fn every_prefix_and_every_flipped_bit_is_refused() {
        let (bytes, _) = file(&sample());
        for len in 0..bytes.len() {
            let err = read_all(&bytes[..len]).expect_err("a prefix");
            assert!(
                matches!(
                    err,
                    DumpError::NotABackup | DumpError::TooShort(_) | DumpError::Checksum
                ),
                "prefix {len}: {err}"
            );
        }
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let err = read_all(&damaged).expect_err("a flipped bit");
            assert!(
                !matches!(err, DumpError::Io(_) | DumpError::Malformed { .. }),
                "bit {bit}: {err}"
            );
        }
    }

    #[test]
    fn a_malformed_body_with_a_valid_checksum_is_an_error_not_a_panic() {
        // Bodies no writer makes, checksummed as if one had: every decode path must hold.
        let mut seed = 0x9e37_79b9_u64;
        for _ in 0..2000 {
            let mut body = MAGIC.to_vec();
            body.extend_from_slice(&FORMAT.to_be_bytes());
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let n = (seed % 64) as usize;
            body.extend((0..n).map(|i| (seed >> (i % 8 * 8)) as u8));
            let digest: [u8; 32] = Sha256::digest(&body).into();
            body.extend_from_slice(&digest);
            // Only that it returns: any answer but a panic or a huge allocation will do.
            let _ = read_all(&body);
        }
    }
}
