//! In-process channels: two connected [`Channel`] ends over bounded queues, for tests of the
//! protocols that run over a data channel (and the in-process fake transport).

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Channel, TransportError};

/// One end of an in-process channel.
pub struct MemoryChannel {
    tx: Option<mpsc::Sender<Bytes>>,
    rx: mpsc::Receiver<Bytes>,
}

/// Two connected ends; each direction holds at most `capacity` messages before `send` waits.
pub fn pair(capacity: usize) -> (MemoryChannel, MemoryChannel) {
    let (a_tx, a_rx) = mpsc::channel(capacity);
    let (b_tx, b_rx) = mpsc::channel(capacity);
    (
        MemoryChannel {
            tx: Some(a_tx),
            rx: b_rx,
        },
        MemoryChannel {
            tx: Some(b_tx),
            rx: a_rx,
        },
    )
}

#[async_trait]
impl Channel for MemoryChannel {
    async fn send(&mut self, message: Bytes) -> Result<(), TransportError> {
        match &self.tx {
            Some(tx) => tx.send(message).await.map_err(|_| TransportError::Closed),
            None => Err(TransportError::Closed),
        }
    }

    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>> {
        self.rx.recv().await.map(Ok)
    }

    async fn close(&mut self) -> Result<(), TransportError> {
        self.tx = None;
        Ok(())
    }
}
