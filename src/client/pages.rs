//! Every page of a stream from a cursor on, the next one asked for while this one is
//! parsed.
//!
//! A page's `next_cursor` is the only way to ask for the one after it, so a reader that
//! waits for each page to be parsed leaves Nango idle while it parses, and itself idle
//! while Nango answers. Nango writes `next_cursor` first in its answer
//! (`{"next_cursor":"...","records":[...]}`), so [`Pages`] reads it from the body's first
//! bytes and sends the next request at once, then parses the page. The guess is checked
//! against the parsed page before its answer is used: when they differ, or the body
//! does not open that way, the next page is asked for after the parse, as a plain
//! reader would. Nothing is asked for that would not be anyway: a guess is only made
//! when the answer names a next page.

use tokio::task::JoinHandle;

use super::{NangoClient, RecordsBody, RecordsQuery};
use crate::error::{Error, Result};
use crate::page::Page;
use crate::record::{Cursor, StreamKey};

/// Every page of a stream after a cursor, in order: see [`NangoClient::pages`].
///
/// At most one request is under way ahead of the page returned last; dropping the
/// reader cancels it.
#[derive(Debug)]
pub struct Pages {
    client: NangoClient,
    stream: StreamKey,
    limit: u32,
    /// The cursor of the next page to return.
    cursor: Option<Cursor>,
    /// The request sent ahead: its cursor and the task reading its body.
    ahead: Option<(Cursor, JoinHandle<Result<RecordsBody>>)>,
    /// The last page, or an error, was returned.
    done: bool,
}

impl NangoClient {
    /// Every page of `stream` after `cursor` (from the stream's start with `None`), at
    /// most `limit` records each, as [`NangoClient::list_records`] reads them (the same
    /// requests, retries and rate budget). Each page's successor is asked for as soon as
    /// its answer arrives, while it is parsed: Nango writes `next_cursor` first in its
    /// answer, so it is read from the body's first bytes, and checked against the parsed
    /// page before the answer ahead is used (when they differ, or the body opens
    /// otherwise, the next page is asked for after the parse). No request is sent that a
    /// plain reader would not send.
    pub fn pages(&self, stream: &StreamKey, cursor: Option<Cursor>, limit: u32) -> Pages {
        Pages {
            client: self.clone(),
            stream: stream.clone(),
            limit,
            cursor,
            ahead: None,
            done: false,
        }
    }
}

impl Pages {
    /// The next page; `None` once the last page (`next_cursor: null`) or an error has
    /// been returned.
    pub async fn next(&mut self) -> Option<Result<Page>> {
        if self.done {
            return None;
        }
        let page = self.read().await;
        match &page {
            Ok(p) if !p.is_last() => self.cursor.clone_from(&p.next_cursor),
            _ => {
                self.done = true;
                self.cancel_ahead();
            }
        }
        Some(page)
    }

    async fn read(&mut self) -> Result<Page> {
        let body = match self.ahead.take() {
            Some((guess, task)) if self.cursor.as_ref() == Some(&guess) => {
                task.await.map_err(|e| {
                    Error::invalid("records", format!("the request sent ahead failed: {e}"))
                })?
            }
            other => {
                if let Some((_, task)) = other {
                    task.abort();
                }
                self.client.records_body(&self.query()).await
            }
        }?;
        if let Some(next) = body.next_cursor_hint() {
            let (client, stream, limit) = (self.client.clone(), self.stream.clone(), self.limit);
            let cursor = next.clone();
            let task = tokio::spawn(async move {
                let query = RecordsQuery::new(&stream)
                    .cursor(Some(&cursor))
                    .limit(limit);
                client.records_body(&query).await
            });
            self.ahead = Some((next, task));
        }
        match body.parse() {
            // Cut short (the connection broke): the request again, retried as
            // `list_records` retries.
            Err(e) if e.is_retryable() => self.client.list_records(&self.query()).await,
            parsed => parsed,
        }
    }

    fn query(&self) -> RecordsQuery<'_> {
        RecordsQuery::new(&self.stream)
            .cursor(self.cursor.as_ref())
            .limit(self.limit)
    }

    fn cancel_ahead(&mut self) {
        if let Some((_, task)) = self.ahead.take() {
            task.abort();
        }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        self.cancel_ahead();
    }
}
