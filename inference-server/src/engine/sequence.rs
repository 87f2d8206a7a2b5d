//! One request's state inside the engine: its tokens, its sampler,
//! and the text pipeline (UTF-8 reassembly, then stop strings) between sampled
//! ids and the client's channel.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::sampling::{Sampler, TokenLogprobs};
use super::{Constraint, Event, Failure, FinishReason, Usage};
use crate::metrics::Metrics;
use crate::text::{IncrementalDecoder, StopMatcher, StopOutcome, TextTokenizer};

pub(super) struct Sequence {
    /// The prompt, then every token sampled: the last one is the next
    /// step's input, and after a preemption all of them are fed again.
    pub tokens: Vec<u32>,
    prompt_len: usize,
    /// Prompt tokens its first admission found in the prefix cache.
    pub cached_tokens: Option<usize>,
    pub sampler: Sampler,
    /// `Some(k)`: each token's log-probabilities go to the client, with
    /// the `k` most likely tokens'.
    pub logprobs: Option<usize>,
    /// The response format's constraint: masks the logits of every token
    /// sampled, and is told each token chosen.
    pub grammar: Option<Constraint>,
    max_new_tokens: usize,
    ignore_eos: bool,
    generated: usize,
    decoder: IncrementalDecoder,
    stops: StopMatcher,
    events: mpsc::UnboundedSender<Event>,
    received: Instant,
    /// This sequence's first token is its request's (its first choice): the
    /// other choices' first tokens come in the same step.
    pub timed: bool,
    /// Shared by the request's choices while they live: the last to end
    /// ends the request.
    choices: Arc<()>,
    last_token_at: Option<Instant>,
    /// Held until the sequence ends: its release admits the next request.
    permit: Option<OwnedSemaphorePermit>,
}

pub(super) struct SequenceParts {
    pub prompt: Vec<u32>,
    pub sampler: Sampler,
    pub max_new_tokens: usize,
    pub logprobs: Option<usize>,
    pub grammar: Option<Constraint>,
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// Special tokens written as text (see `GenerationParams`).
    pub shown_special: Vec<u32>,
    pub events: mpsc::UnboundedSender<Event>,
    pub received: Instant,
    /// The request's first choice (see `Sequence::timed`).
    pub timed: bool,
    /// One clone per choice of the request.
    pub choices: Arc<()>,
    pub permit: OwnedSemaphorePermit,
}

impl Sequence {
    pub fn new(p: SequenceParts, tokenizer: Arc<TextTokenizer>) -> Self {
        Self {
            prompt_len: p.prompt.len(),
            tokens: p.prompt,
            cached_tokens: None,
            sampler: p.sampler,
            logprobs: p.logprobs,
            grammar: p.grammar,
            max_new_tokens: p.max_new_tokens,
            ignore_eos: p.ignore_eos,
            generated: 0,
            decoder: IncrementalDecoder::new(tokenizer)
                .continuing()
                .showing(p.shown_special),
            stops: StopMatcher::new(p.stop),
            events: p.events,
            received: p.received,
            timed: p.timed,
            choices: p.choices,
            last_token_at: None,
            permit: Some(p.permit),
        }
    }

    /// The client hung up: its receiver is gone.
    pub fn is_abandoned(&self) -> bool {
        self.events.is_closed()
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated,
            cached_tokens: self.cached_tokens.unwrap_or(0),
        }
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    pub fn generated(&self) -> usize {
        self.generated
    }

    pub fn received(&self) -> Instant {
        self.received
    }

    /// No other choice of its request is still running.
    pub fn is_last_choice(&self) -> bool {
        Arc::strong_count(&self.choices) == 1
    }

    /// Takes a sampled token (with its log-probabilities when asked for);
    /// returns why the sequence ends, if it does.
    pub fn accept(
        &mut self,
        token: u32,
        logprobs: Option<TokenLogprobs>,
        tokenizer: &TextTokenizer,
        metrics: &Metrics,
    ) -> Option<FinishReason> {
        let now = Instant::now();
        match self.last_token_at {
            None if self.timed => metrics
                .time_to_first_token
                .observe_duration(now - self.received),
            None => {}
            Some(t) => metrics.inter_token_latency.observe_duration(now - t),
        }
        self.last_token_at = Some(now);
        self.generated += 1;
        self.tokens.push(token);
        metrics.generated_tokens.add(1);

        if !self.ignore_eos && tokenizer.stop_token_ids().contains(&token) {
            self.flush();
            return Some(FinishReason::Stop);
        }
        // The end-of-sequence token above is not part of the answer, so it
        // has no entry, as it has no text.
        if let Some(lp) = logprobs {
            let _ = self.events.send(Event::Logprobs(lp));
        }
        let piece = self.decoder.push(token);
        if self.emit(&piece) {
            return Some(FinishReason::Stop);
        }
        if self.generated >= self.max_new_tokens {
            self.flush();
            return Some(FinishReason::Length);
        }
        None
    }

    /// Passes text through the stop matcher; true when a stop string ended it.
    fn emit(&mut self, piece: &str) -> bool {
        if piece.is_empty() {
            return false;
        }
        let (text, stopped) = match self.stops.push(piece) {
            StopOutcome::Continue(text) => (text, false),
            StopOutcome::Stopped(text) => (text, true),
        };
        self.send_text(text);
        stopped
    }

    /// Ends the text: bytes of an unfinished character, then anything the
    /// stop matcher held back as a possible stop prefix.
    /// Sends what the UTF-8 decoder and the stop matcher still hold: the
    /// sequence ends without a token that would have flushed them (its
    /// grammar completed).
    pub fn flush(&mut self) {
        let rest = self.decoder.finish();
        if !self.emit(&rest) {
            let held = self.stops.finish();
            self.send_text(held);
        }
    }

    fn send_text(&self, text: String) {
        if !text.is_empty() {
            let _ = self.events.send(Event::Text(text));
        }
    }

    /// The slot is free before the client hears the end, so a client that
    /// resubmits at once is not refused by its own finished request.
    pub fn finish(&mut self, reason: FinishReason) {
        self.permit = None;
        let _ = self.events.send(Event::Finished {
            reason,
            usage: self.usage(),
        });
    }

    pub fn fail(&mut self, failure: Failure) {
        self.permit = None;
        // Admitted at least once (its cached tokens are set then): its
        // prompt was read, whatever happened after.
        let usage = if self.cached_tokens.is_some() {
            self.usage()
        } else {
            Usage::default()
        };
        let _ = self.events.send(Event::Failed { failure, usage });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::sampling::SamplingParams;
    use crate::text::fixtures::{sp_id, tiny_sp_tokenizer};
    use tokio::sync::Semaphore;

    /// The text events of an answer of `ids` on a SentencePiece tokenizer
    /// that writes a prefix space before a text, with `stop` strings.
    fn answer(ids: &[&str], stop: &[&str]) -> (Vec<String>, Option<FinishReason>) {
        let tokenizer = Arc::new(tiny_sp_tokenizer());
        assert!(tokenizer.strips_leading_space());
        let (events, mut rx) = mpsc::unbounded_channel();
        let mut sequence = Sequence::new(
            SequenceParts {
                prompt: vec![1],
                sampler: Sampler::new(SamplingParams::default(), Vec::new(), 0),
                max_new_tokens: 16,
                logprobs: None,
                grammar: None,
                stop: stop.iter().map(|s| s.to_string()).collect(),
                ignore_eos: false,
                shown_special: Vec::new(),
                events,
                received: Instant::now(),
                timed: false,
                choices: Arc::new(()),
                permit: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
            },
            Arc::clone(&tokenizer),
        );
        let metrics = Metrics::default();
        let finish = ids
            .iter()
            .find_map(|piece| sequence.accept(sp_id(piece), None, &tokenizer, &metrics));
        drop(sequence);
        let mut texts = Vec::new();
        while let Ok(event) = rx.try_recv() {
            if let Event::Text(text) = event {
                texts.push(text);
            }
        }
        (texts, finish)
    }

    #[test]
    fn an_answer_keeps_its_first_words_space_and_a_stop_string_can_match_it() {
        let (texts, _) = answer(&["▁hello", "▁world"], &[]);
        assert_eq!(texts.concat(), " hello world");
        let (texts, finish) = answer(&["▁hello", "▁world"], &[" hello"]);
        assert_eq!(
            (texts.concat().as_str(), finish),
            ("", Some(FinishReason::Stop))
        );
    }
}
