//! The queue of one outgoing link: frames waiting for the link's writer, bounded in number and in
//! bytes, so that a peer that stops reading costs its sender a bounded amount of memory (the
//! link is then closed as overflowed, and the peer catches up by replay when it comes back).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc::{self, error::TrySendError};

/// A queue holding at most `frames` frames and `bytes` bytes of them.
pub(crate) fn channel(frames: usize, bytes: usize) -> (QueueTx, QueueRx) {
    let (tx, rx) = mpsc::channel(frames);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        QueueTx {
            tx,
            queued: Arc::clone(&queued),
            max_bytes: bytes,
        },
        QueueRx { rx, queued },
    )
}

/// The sending side, held by the outbox.
#[derive(Debug)]
pub(crate) struct QueueTx {
    tx: mpsc::Sender<Bytes>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl QueueTx {
    /// Queues `frame`; `Full` if it would pass either bound, `Closed` if the writer is gone.
    pub(crate) fn try_send(&self, frame: Bytes) -> Result<(), TrySendError<Bytes>> {
        let len = frame.len();
        if self.queued.fetch_add(len, Ordering::AcqRel) + len > self.max_bytes {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(TrySendError::Full(frame));
        }
        self.tx.try_send(frame).inspect_err(|_| {
            self.queued.fetch_sub(len, Ordering::AcqRel);
        })
    }
}

/// The receiving side, held by the link's writer.
#[derive(Debug)]
pub(crate) struct QueueRx {
    rx: mpsc::Receiver<Bytes>,
    queued: Arc<AtomicUsize>,
}

impl QueueRx {
    /// The next frame; `None` once the sender is gone and the queue drained.
    pub(crate) async fn recv(&mut self) -> Option<Bytes> {
        let frame = self.rx.recv().await?;
        self.queued.fetch_sub(frame.len(), Ordering::AcqRel);
        Some(frame)
    }

    /// The next frame if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Bytes> {
        let frame = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(frame.len(), Ordering::AcqRel);
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_bound_the_queue_as_well_as_frames() {
        let (tx, mut rx) = channel(100, 10);
        tx.try_send(Bytes::from_static(b"123456")).unwrap();
        assert!(matches!(
            tx.try_send(Bytes::from_static(b"12345")),
            Err(TrySendError::Full(_))
        ));
        tx.try_send(Bytes::from_static(b"1234")).unwrap();
        assert_eq!(rx.recv().await.as_deref(), Some(&b"123456"[..]));
        tx.try_send(Bytes::from_static(b"12345")).unwrap();
        let (tx, _rx) = channel(1, 1_000);
        tx.try_send(Bytes::from_static(b"a")).unwrap();
        assert!(matches!(
            tx.try_send(Bytes::from_static(b"b")),
            Err(TrySendError::Full(_))
        ));
    }

    #[tokio::test]
    async fn a_closed_queue_gives_its_bytes_back() {
        let (tx, rx) = channel(10, 10);
        drop(rx);
        assert!(matches!(
            tx.try_send(Bytes::from_static(b"123456789")),
            Err(TrySendError::Closed(_))
        ));
        assert_eq!(tx.queued.load(Ordering::Acquire), 0);
    }

    /// The writer drains what is queued without waiting, and the bytes count drops with it.
    #[test]
    fn try_recv_takes_what_is_queued_and_gives_its_bytes_back() {
        let (tx, mut rx) = channel(10, 10);
        assert_eq!(rx.try_recv(), None, "nothing queued");
        tx.try_send(Bytes::from_static(b"abc")).unwrap();
        tx.try_send(Bytes::from_static(b"de")).unwrap();
        assert_eq!(rx.queued.load(Ordering::Acquire), 5);
        assert_eq!(rx.try_recv().as_deref(), Some(&b"abc"[..]));
        assert_eq!(rx.try_recv().as_deref(), Some(&b"de"[..]));
        assert_eq!(rx.try_recv(), None);
        assert_eq!(rx.queued.load(Ordering::Acquire), 0);
    }
}
