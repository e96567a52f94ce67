//! The source's sink: Falcon events into the durable buffer, bad lines into dead letters.
//!
//! This is where "Falcon → buffer exactly once" is made: `write` resolves only after the
//! buffer made the batch durable, and `durable_offset` is read back from the buffer itself,
//! so the source resumes at exactly the next offset after a crash.

use std::sync::Arc;

use bridge_buffer::{Buffer, Record};
use falcon_stream::{EventSink, FalconEvent, SinkError, SourceDeadLetter};

use crate::dead_letter::{DeadLetter, DeadLetterWriter, Stage};

/// [`EventSink`] over a [`Buffer`].
#[derive(Debug)]
pub struct BufferSink<B> {
    buffer: Arc<B>,
    dead_letters: Arc<DeadLetterWriter>,
}

impl<B> BufferSink<B> {
    /// A sink appending to `buffer` and dead-lettering into `dead_letters`.
    pub fn new(buffer: Arc<B>, dead_letters: Arc<DeadLetterWriter>) -> Self {
        Self {
            buffer,
            dead_letters,
        }
    }
}

fn buffer_error(error: bridge_buffer::BufferError) -> SinkError {
    SinkError::new("buffer", error)
}

impl<B: Buffer> EventSink for BufferSink<B> {
    async fn durable_offset(&self, partition: u32) -> Result<Option<u64>, SinkError> {
        let offsets = self.buffer.resume_offsets().await.map_err(buffer_error)?;
        Ok(offsets.get(&partition).copied())
    }

    async fn write(&self, _partition: u32, events: Vec<FalconEvent>) -> Result<(), SinkError> {
        let records = events
            .into_iter()
            .map(|event| Record {
                partition: event.partition,
                offset: event.offset,
                event_type: event.event_type,
                customer_id: event.customer_id,
                created_at_ms: event.created_at_ms,
                payload: event.raw,
            })
            .collect();
        self.buffer.append(records).await.map_err(buffer_error)
    }

    async fn dead_letter(&self, letter: SourceDeadLetter) -> Result<(), SinkError> {
        let mut record =
            DeadLetter::new(Stage::Source, letter.reason.to_string(), letter.partition);
        record.offset = letter.after_offset;
        record.message = Some(format!(
            "line after offset {:?} of partition {} could not become an event",
            letter.after_offset, letter.partition
        ));
        record.set_raw(&letter.raw, self.dead_letters.max_record_bytes());
        record.raw_len = letter.raw_len;
        self.dead_letters
            .write(vec![record])
            .await
            .map_err(|error| SinkError::msg(format!("dead-letter destination: {error:#}")))
    }
}
