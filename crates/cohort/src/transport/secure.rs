//! Authenticated, encrypted links: the Noise protocol framework (`snow`) keyed with a pre-shared
//! cluster key.
//!
//! A link between nodes that hold cluster keys runs the handshake
//! `Noise_NNpsk0_25519_AESGCM_SHA256` right after the preambles: the dialer proves it holds a key
//! with its first message (the key is mixed in before anything is sent), the acceptor with its
//! answer, and both derive fresh session keys from ephemeral Diffie-Hellman, so a recorded link
//! stays secret even if a cluster key leaks later. Everything after is AES-256-GCM with a new
//! nonce per message: a byte inserted, dropped, replayed or reordered fails the next decryption
//! and closes the link.
//!
//! Before its first message the dialer sends its node name in the clear (at most 128 bytes); the
//! name is bound into the handshake as its prologue, so it cannot be changed on the way. It lets
//! the acceptor log who failed to authenticate, and lets a proxy tell links apart.
//!
//! A keyring holds several keys. The dialer uses one of them (the primary, or the next one after a
//! failed attempt); the acceptor tries each of its keys on the first message, which costs no
//! Diffie-Hellman. Rotating a key is then a rolling change that breaks nothing: add the new key
//! everywhere, make it primary everywhere, remove the old one.
//!
//! On the wire, every handshake and transport message travels after a header of
//! [`MESSAGE_HEADER`] bytes: its length, big-endian. Transport messages carry up to 64 KiB of the link's byte stream each: a flush
//! of many frames is encrypted as few messages.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInPlace, KeyInit};
use bytes::{Buf, BytesMut};
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, FallbackResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use snow::{HandshakeState, TransportState};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::io::poll_read_buf;

use super::{BoxConnection, LinkError};
use crate::membership::MAX_NAME_BYTES;

/// The Noise protocol every keyed link runs.
const NOISE: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";

/// The longest Noise message.
const MAX_MESSAGE: usize = 65_535;

/// AES-GCM's tag.
const TAG: usize = 16;

/// Plaintext bytes per transport message.
const MAX_PLAINTEXT: usize = MAX_MESSAGE - TAG;

/// The longest handshake message accepted (NNpsk0's are 48 bytes with no payload).
const MAX_HANDSHAKE_MESSAGE: usize = 1024;

/// Ciphertext queued for the connection before a writer has to wait.
const MAX_QUEUED: usize = 4 * MAX_MESSAGE;

/// A 32-byte secret shared by every node of a cluster. `cohort keygen` prints a new one; it is
/// written as 64 hexadecimal digits (also what `openssl rand -hex 32` prints).
///
/// ```
/// let key = cohort::ClusterKey::generate();
/// let again: cohort::ClusterKey = key.to_hex().parse()?;
/// assert_eq!(key.fingerprint(), again.fingerprint());
/// assert!(!format!("{key:?}").contains(&key.to_hex()), "Debug shows no secret");
/// # Ok::<(), cohort::KeyError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl ClusterKey {
    /// A new random key, from the operating system's randomness.
    pub fn generate() -> Self {
        let mut key = [0; 32];
        rand::fill(&mut key);
        Self(key)
    }

    /// The key as 64 hexadecimal digits.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// A short name for the key that gives nothing of it away: the first 4 bytes of its SHA-256,
    /// in hexadecimal. Logs and metrics name keys by it.
    pub fn fingerprint(&self) -> String {
        hex(&Sha256::digest(self.0)[..4])
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({})", self.fingerprint())
    }
}

impl FromStr for ClusterKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(KeyError::Length(text.len()));
        }
        let mut key = [0; 32];
        for (byte, pair) in key.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
            let digits = std::str::from_utf8(pair).map_err(|_| KeyError::NotHex)?;
            *byte = u8::from_str_radix(digits, 16).map_err(|_| KeyError::NotHex)?;
        }
        Ok(Self(key))
    }
}

/// Why a cluster key was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not 64 characters long.
    #[error("a cluster key is 64 hexadecimal digits (32 bytes), not {0} characters")]
    Length(usize),
    /// A character is not a hexadecimal digit.
    #[error("a cluster key is 64 hexadecimal digits; this one has other characters")]
    NotHex,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The keys a node accepts, the first one (the primary) dialing. Shared by the node's links, so
/// a new set applies to the next handshake.
#[derive(Clone, Debug, Default)]
pub(crate) struct Keyring(Arc<RwLock<Vec<ClusterKey>>>);

impl Keyring {
    pub(crate) fn new(keys: Vec<ClusterKey>) -> Self {
        Self(Arc::new(RwLock::new(keys)))
    }

    pub(crate) fn replace(&self, keys: Vec<ClusterKey>) {
        *self.0.write() = keys;
    }

    pub(crate) fn keys(&self) -> Vec<ClusterKey> {
        self.0.read().clone()
    }
}

/// The handshake's prologue: both sides mix it in, so the dialer's name cannot be altered.
fn prologue(dialer: &str) -> Vec<u8> {
    [b"cohort link from ".as_slice(), dialer.as_bytes()].concat()
}

fn noise(error: snow::Error) -> LinkError {
    LinkError::Auth(error.to_string())
}

/// A handshake builder for [`NOISE`], with the cipher that keeps its key schedule.
fn builder() -> Result<snow::Builder<'static>, LinkError> {
    let resolver = FallbackResolver::new(Box::new(KeptKeySchedule), Box::new(DefaultResolver));
    Ok(snow::Builder::with_resolver(
        NOISE.parse().map_err(noise)?,
        Box::new(resolver),
    ))
}

/// Resolves AES-GCM to [`KeptAesGcm`], and nothing else (snow's own resolver does the rest).
struct KeptKeySchedule;

impl CryptoResolver for KeptKeySchedule {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        None
    }

    fn resolve_dh(&self, _choice: &DHChoice) -> Option<Box<dyn Dh>> {
        None
    }

    fn resolve_hash(&self, _choice: &HashChoice) -> Option<Box<dyn Hash>> {
        None
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        matches!(choice, CipherChoice::AESGCM)
            .then(|| Box::new(KeptAesGcm(None)) as Box<dyn Cipher>)
    }
}

/// AES-256-GCM as the Noise specification uses it (the 64-bit counter, big-endian, after four
/// zero bytes), from the `aes-gcm` crate as in snow's own resolver, but with the key expanded
/// once when it is set rather than for every message: for the small messages a link carries that
/// expansion was most of the cost.
struct KeptAesGcm(Option<Aes256Gcm>);

impl KeptAesGcm {
    fn nonce(counter: u64) -> aes_gcm::Nonce<aes_gcm::aead::consts::U12> {
        let mut nonce = [0; 12];
        nonce[4..].copy_from_slice(&counter.to_be_bytes());
        nonce.into()
    }
}

impl Cipher for KeptAesGcm {
    fn name(&self) -> &'static str {
        "AESGCM"
    }

    fn set(&mut self, key: &[u8; 32]) {
        self.0 = Some(Aes256Gcm::new(key.into()));
    }

    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        // snow encrypts with a cipher only once it has set its key, into a buffer with room for
        // the tag; a message (at most 64 KiB) is far below AES-GCM's length limit.
        let aead = self
            .0
            .as_ref()
            .expect("snow sets the key before encrypting");
        let len = plaintext.len();
        out[..len].copy_from_slice(plaintext);
        let tag = aead
            .encrypt_in_place_detached(&Self::nonce(nonce), authtext, &mut out[..len])
            .expect("a Noise message is within AES-GCM's length limit");
        out[len..len + TAG].copy_from_slice(&tag);
        len + TAG
    }

    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let (Some(aead), Some(len)) = (&self.0, ciphertext.len().checked_sub(TAG)) else {
            return Err(snow::Error::Decrypt);
        };
        out[..len].copy_from_slice(&ciphertext[..len]);
        aead.decrypt_in_place_detached(
            &Self::nonce(nonce),
            authtext,
            &mut out[..len],
            ciphertext[len..].into(),
        )
        .map_err(|_| snow::Error::Decrypt)?;
        Ok(len)
    }
}

/// Runs the dialer's side of the handshake with `key`, as the node named `me`.
pub(crate) async fn dial(
    stream: &mut BoxConnection,
    me: &str,
    key: &ClusterKey,
    timeout: Duration,
) -> Result<TransportState, LinkError> {
    let prologue = prologue(me);
    let mut handshake = builder()?
        .prologue(&prologue)
        .map_err(noise)?
        .psk(0, &key.0)
        .map_err(noise)?
        .build_initiator()
        .map_err(noise)?;
    let mut message = [0; MAX_HANDSHAKE_MESSAGE];
    let len = handshake.write_message(&[], &mut message).map_err(noise)?;
    let mut hello = Vec::with_capacity(4 + me.len() + len);
    put_message(&mut hello, me.as_bytes());
    put_message(&mut hello, &message[..len]);
    with_timeout(timeout, stream.write_all(&hello)).await?;
    // An acceptor that holds none of this node's keys closes the link without a word (anything
    // it said could be forged): a close here is taken for that.
    let answer = match read_message(stream, MAX_HANDSHAKE_MESSAGE, timeout).await {
        Err(LinkError::Io(error))
            if matches!(
                error.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
            ) =>
        {
            return Err(LinkError::Auth(
                "the peer closed the link at this node's key: it may not hold it".into(),
            ));
        }
        answer => answer?,
    };
    handshake
        .read_message(&answer, &mut message)
        .map_err(|_| LinkError::Auth("the peer does not accept this node's cluster key".into()))?;
    handshake.into_transport_mode().map_err(noise)
}

/// Runs the acceptor's side of the handshake with any key of `keys`; returns the session and the
/// name the dialer gave.
pub(crate) async fn accept(
    stream: &mut BoxConnection,
    keys: &[ClusterKey],
    timeout: Duration,
) -> Result<(TransportState, String), LinkError> {
    let name = read_message(stream, MAX_NAME_BYTES, timeout).await?;
    let name = String::from_utf8(name)
        .map_err(|_| LinkError::Auth("the dialer's name is not UTF-8".into()))?;
    let first = read_message(stream, MAX_HANDSHAKE_MESSAGE, timeout).await?;
    let prologue = prologue(&name);
    let mut payload = [0; MAX_HANDSHAKE_MESSAGE];
    let mut accepted = None;
    for key in keys {
        let mut handshake = responder(&prologue, key)?;
        if handshake.read_message(&first, &mut payload).is_ok() {
            accepted = Some(handshake);
            break;
        }
    }
    let mut handshake = accepted.ok_or_else(|| {
        LinkError::Auth(format!("{name:?} holds none of this node's cluster keys"))
    })?;
    let len = handshake.write_message(&[], &mut payload).map_err(noise)?;
    let mut answer = Vec::with_capacity(2 + len);
    put_message(&mut answer, &payload[..len]);
    with_timeout(timeout, stream.write_all(&answer)).await?;
    Ok((handshake.into_transport_mode().map_err(noise)?, name))
}

fn responder(prologue: &[u8], key: &ClusterKey) -> Result<HandshakeState, LinkError> {
    builder()?
        .prologue(prologue)
        .map_err(noise)?
        .psk(0, &key.0)
        .map_err(noise)?
        .build_responder()
        .map_err(noise)
}

/// Bytes before every handshake and transport message: its length, big-endian.
pub const MESSAGE_HEADER: usize = 2;

/// The length a message header announces.
pub fn message_len(header: [u8; MESSAGE_HEADER]) -> usize {
    usize::from(u16::from_be_bytes(header))
}

/// The header announcing a message of `len` bytes; `None` past what a header can say.
pub fn message_header(len: usize) -> Option<[u8; MESSAGE_HEADER]> {
    u16::try_from(len).ok().map(u16::to_be_bytes)
}

fn put_message(out: &mut Vec<u8>, message: &[u8]) {
    // Callers pass names of at most 128 bytes and handshake messages of at most 1 KiB.
    let header = message_header(message.len()).unwrap_or([u8::MAX; MESSAGE_HEADER]);
    out.extend_from_slice(&header);
    out.extend_from_slice(message);
}

/// Reads one length-prefixed message of at most `max` bytes.
async fn read_message(
    stream: &mut BoxConnection,
    max: usize,
    timeout: Duration,
) -> Result<Vec<u8>, LinkError> {
    let mut header = [0; MESSAGE_HEADER];
    with_timeout(timeout, stream.read_exact(&mut header)).await?;
    let len = message_len(header);
    if len > max {
        return Err(LinkError::Auth(format!(
            "a handshake message of {len} bytes (at most {max})"
        )));
    }
    let mut message = vec![0; len];
    with_timeout(timeout, stream.read_exact(&mut message)).await?;
    Ok(message)
}

async fn with_timeout<T>(
    timeout: Duration,
    io: impl Future<Output = io::Result<T>>,
) -> Result<T, LinkError> {
    Ok(tokio::time::timeout(timeout, io)
        .await
        .map_err(|_| LinkError::Timeout)??)
}

/// A connection whose bytes travel as Noise transport messages.
pub(crate) struct NoiseStream {
    inner: BoxConnection,
    session: TransportState,
    /// Ciphertext read and not yet decrypted.
    received: BytesMut,
    /// Plaintext decrypted and not yet read.
    plaintext: BytesMut,
    /// Plaintext written and not yet encrypted.
    unsent: Vec<u8>,
    /// Ciphertext (with length prefixes) not yet written.
    sealed: BytesMut,
}

impl NoiseStream {
    pub(crate) fn new(inner: BoxConnection, session: TransportState) -> Self {
        Self {
            inner,
            session,
            received: BytesMut::new(),
            plaintext: BytesMut::new(),
            unsent: Vec::new(),
            sealed: BytesMut::new(),
        }
    }

    /// Encrypts what was written so far as one message.
    fn seal(&mut self) -> io::Result<()> {
        if self.unsent.is_empty() {
            return Ok(());
        }
        let len = self.unsent.len() + TAG;
        // `unsent` never grows past MAX_PLAINTEXT, so a header can say `len`.
        let header = message_header(len).ok_or_else(|| io::Error::other("a message too long"))?;
        let start = self.sealed.len();
        self.sealed.resize(start + MESSAGE_HEADER + len, 0);
        self.sealed[start..start + MESSAGE_HEADER].copy_from_slice(&header);
        self.session
            .write_message(&self.unsent, &mut self.sealed[start + MESSAGE_HEADER..])
            .map_err(io::Error::other)?;
        self.unsent.clear();
        Ok(())
    }

    /// Writes sealed messages to the connection until none is left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.sealed.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.sealed))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sealed.advance(written);
        }
        Poll::Ready(Ok(()))
    }

    /// Decrypts the next whole message received, if there is one.
    fn open(&mut self) -> io::Result<bool> {
        let Some(&header) = self.received.first_chunk::<MESSAGE_HEADER>() else {
            return Ok(false);
        };
        let len = message_len(header);
        if self.received.len() < MESSAGE_HEADER + len {
            return Ok(false);
        }
        let message = self.received.split_to(MESSAGE_HEADER + len);
        let start = self.plaintext.len();
        self.plaintext.resize(start + len, 0);
        let plain = self
            .session
            .read_message(&message[MESSAGE_HEADER..], &mut self.plaintext[start..])
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a link message failed to decrypt",
                )
            })?;
        self.plaintext.truncate(start + plain);
        Ok(true)
    }
}

impl AsyncRead for NoiseStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.plaintext.is_empty() {
            if this.open()? {
                continue;
            }
            this.received.reserve(MAX_MESSAGE + 2);
            let read = ready!(poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.received
            ))?;
            if read == 0 {
                // A close in the middle of a message is an error; between messages, the end.
                return Poll::Ready(if this.received.is_empty() {
                    Ok(())
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                });
            }
        }
        let n = buf.remaining().min(this.plaintext.len());
        buf.put_slice(&this.plaintext.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for NoiseStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.sealed.len() >= MAX_QUEUED {
            ready!(this.poll_drain(cx))?;
        }
        let n = data.len().min(MAX_PLAINTEXT - this.unsent.len());
        this.unsent.extend_from_slice(&data[..n]);
        if this.unsent.len() == MAX_PLAINTEXT {
            this.seal()?;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.seal()?;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn psk() -> [u8; 32] {
        [7; 32]
    }

    /// Runs NNpsk0 between `initiator` and `responder`; returns their transport states.
    fn handshake(
        initiator: snow::Builder<'_>,
        responder: snow::Builder<'_>,
    ) -> (TransportState, TransportState) {
        let key = psk();
        let mut i = initiator.psk(0, &key).unwrap().build_initiator().unwrap();
        let mut r = responder.psk(0, &key).unwrap().build_responder().unwrap();
        let (mut a, mut b) = ([0; 1024], [0; 1024]);
        let n = i.write_message(&[], &mut a).unwrap();
        r.read_message(&a[..n], &mut b).unwrap();
        let n = r.write_message(&[], &mut a).unwrap();
        i.read_message(&a[..n], &mut b).unwrap();
        (
            i.into_transport_mode().unwrap(),
            r.into_transport_mode().unwrap(),
        )
    }

    /// The kept-key cipher is snow's AES-GCM to the byte: each side reads what the other wrote,
    /// message after message, and a flipped bit is refused.
    #[test]
    fn the_kept_key_cipher_speaks_snows_aes_gcm() {
        let (mut theirs, mut ours) = handshake(
            snow::Builder::new(NOISE.parse().unwrap()),
            builder().unwrap(),
        );
        let (mut sealed, mut opened) = ([0; 2048], [0; 2048]);
        for round in 0..5_u8 {
            let message = vec![round; 100 + usize::from(round)];
            let n = theirs.write_message(&message, &mut sealed).unwrap();
            let m = ours.read_message(&sealed[..n], &mut opened).unwrap();
            assert_eq!(&opened[..m], &message[..]);
            let n = ours.write_message(&message, &mut sealed).unwrap();
            let m = theirs.read_message(&sealed[..n], &mut opened).unwrap();
            assert_eq!(&opened[..m], &message[..]);
        }
        let n = theirs.write_message(b"tampered", &mut sealed).unwrap();
        sealed[3] ^= 1;
        assert!(ours.read_message(&sealed[..n], &mut opened).is_err());
        assert!(
            ours.read_message(&sealed[..TAG - 1], &mut opened).is_err(),
            "too short"
        );
    }

    /// Over a real stream: two ends with a key in common link and carry bytes both ways; an end
    /// with none of the acceptor's keys is refused by it, and learns so from the close.
    #[tokio::test]
    async fn dial_and_accept_over_a_stream() {
        let shared = ClusterKey::generate();
        let (dialer, acceptor) = tokio::io::duplex(1 << 16);
        let (mut dialer, mut acceptor): (BoxConnection, BoxConnection) =
            (Box::new(dialer), Box::new(acceptor));
        let timeout = Duration::from_secs(5);
        let keys = [ClusterKey::generate(), shared.clone()];
        let (dialed, accepted) = tokio::join!(
            dial(&mut dialer, "a", &shared, timeout),
            accept(&mut acceptor, &keys, timeout),
        );
        let (accepted, name) = accepted.unwrap();
        assert_eq!(name, "a");
        let mut a = NoiseStream::new(dialer, dialed.unwrap());
        let mut b = NoiseStream::new(acceptor, accepted);
        let mut got = vec![0; 100_000];
        let (written, read) = tokio::join!(
            async {
                a.write_all(&[9; 100_000]).await?;
                a.flush().await
            },
            b.read_exact(&mut got),
        );
        written.unwrap();
        read.unwrap();
        assert!(got.iter().all(|&byte| byte == 9));

        let (dialer, acceptor) = tokio::io::duplex(1 << 16);
        let (mut dialer, mut acceptor): (BoxConnection, BoxConnection) =
            (Box::new(dialer), Box::new(acceptor));
        let other = ClusterKey::generate();
        let (dialed, accepted) =
            tokio::join!(dial(&mut dialer, "mallory", &other, timeout), async {
                let accepted = accept(&mut acceptor, &keys, timeout).await;
                drop(acceptor);
                accepted
            },);
        assert!(matches!(accepted, Err(LinkError::Auth(_))));
        assert!(matches!(dialed, Err(LinkError::Auth(_))));
    }
}
