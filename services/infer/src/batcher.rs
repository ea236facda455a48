//! Dynamic batching of `POST /v1/predict`: requests that arrive while every scoring slot is busy are
//! scored together in one model run (up to `--http-batch-texts` texts), so a flood of small requests
//! costs runs of a batch's size, not one run each; a request that finds a slot free runs at once, alone.
//! A merged run that fails is scored again request by request, so one request's bad text fails only it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::model::{ClassProbabilities, ServingModel};

/// Runs of the HTTP path at once for `sessions` sessions: one per core, so that preparing inputs
/// (featurizing, tokenizing: CPU work outside the session) spreads over the cores as it did when each
/// request ran on its own, and at least one more than the sessions, so that a run prepares while the
/// sessions score. Requests merge once every one of these is taken.
pub fn runs_at_once(sessions: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cores.max(sessions + 1)
}

/// A model the batcher can score texts with (the served model; a fake in unit tests).
pub trait BatchModel: Send + Sync + 'static {
    /// Scores `texts`, one row per text, in order.
    ///
    /// # Errors
    /// The run failed; every request of the run gets the message.
    fn score_batch(&self, texts: &[String]) -> Result<Vec<ClassProbabilities>, String>;
}

impl BatchModel for ServingModel {
    fn score_batch(&self, texts: &[String]) -> Result<Vec<ClassProbabilities>, String> {
        self.score(texts).map_err(|error| error.to_string())
    }
}

/// One request's rows and the run they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// One row per text of the request, in request order.
    pub rows: Vec<ClassProbabilities>,
    /// How long the run took (the model call, every request of the run).
    pub elapsed: Duration,
    /// Requests scored in the run.
    pub run_requests: usize,
    /// Texts scored in the run.
    pub run_texts: usize,
}

/// Why a request got no rows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The model run failed.
    #[error("{0}")]
    Model(String),
    /// The run was lost (its task panicked, or the batcher stopped).
    #[error("the inference task failed")]
    Lost,
}

/// Something a request holds until its run is over (its request slot), whatever the client does.
pub type Held = Box<dyn Send>;

struct Job<M> {
    model: Arc<M>,
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Scored, BatchError>>,
    _held: Option<Held>,
}

/// The queue in front of the scoring slots; cheap to clone.
pub struct PredictBatcher<M> {
    queue: mpsc::Sender<Job<M>>,
    /// Requests sent and not yet in a run.
    waiting: Arc<AtomicUsize>,
}

impl<M> std::fmt::Debug for PredictBatcher<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictBatcher")
            .field("waiting", &self.waiting.load(Ordering::SeqCst))
            .finish()
    }
}

impl<M> Clone for PredictBatcher<M> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            waiting: Arc::clone(&self.waiting),
        }
    }
}

impl<M: BatchModel> PredictBatcher<M> {
    /// Starts the batcher: at most `slots` runs at once, each of at most `max_run_texts` texts (a
    /// request larger than that runs alone; 1 scores every request on its own), `queue` requests
    /// waiting. Runs on the current Tokio runtime until every handle is dropped.
    pub fn spawn(max_run_texts: usize, slots: usize, queue: usize) -> Self {
        let (sender, receiver) = mpsc::channel(queue.max(1));
        let waiting = Arc::new(AtomicUsize::new(0));
        tokio::spawn(form_runs(
            receiver,
            max_run_texts.max(1),
            slots.max(1),
            Arc::clone(&waiting),
        ));
        Self {
            queue: sender,
            waiting,
        }
    }

    /// Requests waiting for a slot (sent, not yet in a run).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Scores `texts` with `model`, merged with whatever else waits for the same model; `held` is
    /// released once the run is over.
    ///
    /// # Errors
    /// The run failed or was lost.
    pub async fn score(
        &self,
        model: Arc<M>,
        texts: Vec<String>,
        held: Option<Held>,
    ) -> Result<Scored, BatchError> {
        let (reply, answer) = oneshot::channel();
        show_waiting(self.waiting.fetch_add(1, Ordering::SeqCst) + 1);
        if self
            .queue
            .send(Job {
                model,
                texts,
                reply,
                _held: held,
            })
            .await
            .is_err()
        {
            show_waiting(self.waiting.fetch_sub(1, Ordering::SeqCst) - 1);
            return Err(BatchError::Lost);
        }
        answer.await.map_err(|_| BatchError::Lost)?
    }
}

/// Takes the next request, waits for a free slot (what arrives meanwhile queues up), then adds every
/// queued request for the same model that fits, and scores the run on a blocking thread.
async fn form_runs<M: BatchModel>(
    mut queue: mpsc::Receiver<Job<M>>,
    max_run_texts: usize,
    slots: usize,
    waiting: Arc<AtomicUsize>,
) {
    let slots = Arc::new(Semaphore::new(slots));
    let mut held_over: Option<Job<M>> = None;
    loop {
        let first = match held_over.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut texts = first.texts.len();
        let mut run = vec![first];
        while texts < max_run_texts {
            match queue.try_recv() {
                Ok(job)
                    if Arc::ptr_eq(&job.model, &run[0].model)
                        && texts + job.texts.len() <= max_run_texts =>
                {
                    texts += job.texts.len();
                    run.push(job);
                }
                // Another model (a swap happened) or too large: it starts the next run.
                Ok(job) => {
                    held_over = Some(job);
                    break;
                }
                Err(_) => break,
            }
        }
        show_waiting(waiting.fetch_sub(run.len(), Ordering::SeqCst) - run.len());
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            score_run(run);
        });
    }
}

/// `sentiflow_infer_http_waiting_requests`: requests sent to the batcher and not yet in a run.
fn show_waiting(waiting: usize) {
    metrics::gauge!("sentiflow_infer_http_waiting_requests").set(waiting as f64);
}

fn score_run<M: BatchModel>(mut run: Vec<Job<M>>) {
    let model = Arc::clone(&run[0].model);
    let lengths: Vec<usize> = run.iter().map(|job| job.texts.len()).collect();
    let texts: Vec<String> = if run.len() == 1 {
        std::mem::take(&mut run[0].texts)
    } else {
        run.iter_mut().flat_map(|job| job.texts.drain(..)).collect()
    };
    let started = Instant::now();
    let scored = checked(model.score_batch(&texts), texts.len());
    let elapsed = started.elapsed();
    count_run(texts.len(), run.len());
    let run_requests = run.len();
    match scored {
        Ok(rows) => {
            let mut rows = rows.into_iter();
            for (job, length) in run.into_iter().zip(lengths) {
                let _ = job.reply.send(Ok(Scored {
                    rows: rows.by_ref().take(length).collect(),
                    elapsed,
                    run_requests,
                    run_texts: texts.len(),
                }));
            }
        }
        Err(message) if run_requests == 1 => {
            let _ = run.remove(0).reply.send(Err(BatchError::Model(message)));
        }
        // One request's text may be what failed: each is scored again on its own, so that only
        // the requests that fail alone get an error.
        Err(_) => {
            let mut start = 0;
            for (job, length) in run.into_iter().zip(lengths) {
                let own = &texts[start..start + length];
                start += length;
                let started = Instant::now();
                let answer = checked(model.score_batch(own), own.len())
                    .map(|rows| Scored {
                        rows,
                        elapsed: started.elapsed(),
                        run_requests: 1,
                        run_texts: own.len(),
                    })
                    .map_err(BatchError::Model);
                count_run(own.len(), 1);
                let _ = job.reply.send(answer);
            }
        }
    }
}

/// One model run of the HTTP path, in `_http_run_texts_rows` and `_http_run_requests`.
fn count_run(texts: usize, requests: usize) {
    metrics::histogram!("sentiflow_infer_http_run_texts_rows").record(texts as f64);
    metrics::histogram!("sentiflow_infer_http_run_requests").record(requests as f64);
}

/// The rows of a run, or why not (also when the model gave a row count that is not one per text).
fn checked(
    scored: Result<Vec<ClassProbabilities>, String>,
    texts: usize,
) -> Result<Vec<ClassProbabilities>, String> {
    match scored {
        Ok(rows) if rows.len() == texts => Ok(rows),
        Ok(rows) => Err(format!(
            "the model gave {} rows for {texts} texts",
            rows.len()
        )),
        Err(message) => Err(message),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};

    use super::*;

    /// Scores a text as its length in the first column and records each run's size. While its gate
    /// is closed a run waits inside the model (as behind a busy session), so that the test decides
    /// what is queued before the next run forms.
    struct Recorder {
        runs: Mutex<Vec<usize>>,
        fail_on: Option<&'static str>,
        gate: Mutex<bool>,
        opened: Condvar,
        entered: Mutex<usize>,
        entering: Condvar,
    }

    impl Recorder {
        fn new(fail_on: Option<&'static str>) -> Arc<Self> {
            Arc::new(Self {
                runs: Mutex::new(Vec::new()),
                fail_on,
                gate: Mutex::new(true),
                opened: Condvar::new(),
                entered: Mutex::new(0),
                entering: Condvar::new(),
            })
        }

        fn close(&self) {
            *self.gate.lock().unwrap() = false;
        }

        fn open(&self) {
            *self.gate.lock().unwrap() = true;
            self.opened.notify_all();
        }

        /// Waits (on a blocking thread) until `count` runs have entered the model.
        async fn entered(self: &Arc<Self>, count: usize) {
            let this = Arc::clone(self);
            tokio::task::spawn_blocking(move || {
                let mut entered = this.entered.lock().unwrap();
                while *entered < count {
                    entered = this.entering.wait(entered).unwrap();
                }
            })
            .await
            .unwrap();
        }

        fn runs(&self) -> Vec<usize> {
            self.runs.lock().unwrap().clone()
        }
    }

    impl BatchModel for Recorder {
        fn score_batch(&self, texts: &[String]) -> Result<Vec<ClassProbabilities>, String> {
            *self.entered.lock().unwrap() += 1;
            self.entering.notify_all();
            let mut open = self.gate.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
            drop(open);
            self.runs.lock().unwrap().push(texts.len());
            if let Some(poison) = self.fail_on
                && texts.iter().any(|text| text == poison)
            {
                return Err(format!("cannot score {poison:?}"));
            }
            Ok(texts
                .iter()
                .map(|text| [text.len() as f32, 0.0, 0.0])
                .collect())
        }
    }

    fn texts(words: &[&str]) -> Vec<String> {
        words.iter().map(|word| (*word).to_owned()).collect()
    }

    type Answer = tokio::task::JoinHandle<Result<Scored, BatchError>>;

    fn send(
        batcher: &PredictBatcher<Recorder>,
        model: &Arc<Recorder>,
        words: Vec<String>,
        held: Option<Held>,
    ) -> Answer {
        let (batcher, model) = (batcher.clone(), Arc::clone(model));
        tokio::spawn(async move { batcher.score(model, words, held).await })
    }

    /// Waits until `count` requests wait for a slot.
    async fn queued(batcher: &PredictBatcher<Recorder>, count: usize) {
        while batcher.waiting() < count {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A batcher of one slot whose first run (of `first`) is inside the closed model.
    async fn busy(
        model: &Arc<Recorder>,
        cap: usize,
        first: Vec<String>,
    ) -> (PredictBatcher<Recorder>, Answer) {
        let batcher = PredictBatcher::spawn(cap, 1, 64);
        model.close();
        let answer = send(&batcher, model, first, None);
        model.entered(1).await;
        (batcher, answer)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_request_runs_at_once_on_its_own() {
        let model = Recorder::new(None);
        let batcher = PredictBatcher::spawn(256, 1, 16);
        let scored = batcher
            .score(Arc::clone(&model), texts(&["a", "bb"]), None)
            .await
            .unwrap();
        assert_eq!(scored.rows, vec![[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]);
        assert_eq!((scored.run_requests, scored.run_texts), (1, 2));
        assert_eq!(model.runs(), vec![2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_waiting_for_a_busy_slot_share_one_run_and_each_gets_its_own_rows() {
        let model = Recorder::new(None);
        let (batcher, first) = busy(&model, 256, texts(&["x"])).await;
        let waiting: Vec<_> = (1..=20)
            .map(|length| {
                let text = "y".repeat(length);
                send(&batcher, &model, vec![text.clone(), text], None)
            })
            .collect();
        // The run forms only once a slot is free: all 20 wait for it.
        queued(&batcher, 20).await;
        model.open();
        assert_eq!(first.await.unwrap().unwrap().run_requests, 1);
        for (index, task) in waiting.into_iter().enumerate() {
            let scored = task.await.unwrap().unwrap();
            let length = (index + 1) as f32;
            assert_eq!(scored.rows, vec![[length, 0.0, 0.0]; 2], "request {index}");
            assert_eq!((scored.run_requests, scored.run_texts), (20, 40));
        }
        assert_eq!(model.runs(), vec![1, 40]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_holds_at_most_the_cap_and_one_model() {
        let model = Recorder::new(None);
        let other = Recorder::new(None);
        let (batcher, busy_answer) = busy(&model, 5, texts(&["busy"])).await;
        let mut waiting = Vec::new();
        for (index, (model, words)) in [
            (&model, texts(&["a", "b"])),
            (&model, texts(&["c", "d"])),
            (&model, texts(&["e", "f"])),
            (&other, texts(&["g"])),
            (&model, texts(&["h", "i", "j", "k", "l", "m", "n"])),
        ]
        .into_iter()
        .enumerate()
        {
            waiting.push(send(&batcher, model, words, None));
            // In this order.
            queued(&batcher, index + 1).await;
        }
        model.open();
        busy_answer.await.unwrap().unwrap();
        for task in waiting {
            task.await.unwrap().unwrap();
        }
        assert_eq!(
            model.runs(),
            vec![1, 4, 2, 7],
            "at most 5 texts a run; the next request starts the next run; a larger one runs alone"
        );
        assert_eq!(other.runs(), vec![1], "the other model ran apart");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_run_is_scored_again_request_by_request_so_only_the_bad_one_fails() {
        let model = Recorder::new(Some("poison"));
        let (batcher, busy_answer) = busy(&model, 256, texts(&["ok"])).await;
        let poisoned = send(&batcher, &model, texts(&["poison"]), None);
        queued(&batcher, 1).await;
        let neighbour = send(&batcher, &model, texts(&["fine", "too"]), None);
        queued(&batcher, 2).await;
        model.open();
        assert!(busy_answer.await.unwrap().is_ok());
        assert_eq!(
            poisoned.await.unwrap(),
            Err(BatchError::Model("cannot score \"poison\"".to_owned()))
        );
        let neighbour = neighbour.await.unwrap().unwrap();
        assert_eq!(neighbour.rows, vec![[4.0, 0.0, 0.0], [3.0, 0.0, 0.0]]);
        assert_eq!(neighbour.run_requests, 1, "scored again on its own");
        assert_eq!(model.runs(), vec![1, 3, 1, 2]);
        let after = batcher
            .score(Arc::clone(&model), texts(&["later"]), None)
            .await
            .unwrap();
        assert_eq!(after.rows, vec![[5.0, 0.0, 0.0]]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_request_holds_is_released_when_its_run_is_over() {
        let model = Recorder::new(None);
        let batcher = PredictBatcher::spawn(256, 1, 16);
        model.close();
        let token = Arc::new(());
        let held: Held = Box::new(Arc::clone(&token));
        let task = send(&batcher, &model, texts(&["a"]), Some(held));
        model.entered(1).await;
        // The client went away: the request still holds its slot until the run ends.
        task.abort();
        let _ = task.await;
        assert_eq!(Arc::strong_count(&token), 2, "held while the run goes on");
        model.open();
        let released = async {
            while Arc::strong_count(&token) > 1 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), released)
            .await
            .expect("released once the run is over");
    }
}
