//! Dynamic batching of `POST /v1/predict`: requests that arrive while every scoring slot is busy are
//! scored together in one model run (up to `--http-batch-texts` texts), so a flood of small requests
//! costs runs of a batch's size, not one run each; a request that finds a slot free runs at once, alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::model::{ClassProbabilities, ServingModel};

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
}

impl<M> std::fmt::Debug for PredictBatcher<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictBatcher")
            .field("waiting_room", &self.queue.capacity())
            .finish()
    }
}

impl<M> Clone for PredictBatcher<M> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<M: BatchModel> PredictBatcher<M> {
    /// Starts the batcher: at most `slots` runs at once, each of at most `max_run_texts` texts (a
    /// request larger than that runs alone; 1 scores every request on its own), `queue` requests
    /// waiting. Runs on the current Tokio runtime until every handle is dropped.
    pub fn spawn(max_run_texts: usize, slots: usize, queue: usize) -> Self {
        let (sender, receiver) = mpsc::channel(queue.max(1));
        tokio::spawn(form_runs(receiver, max_run_texts.max(1), slots.max(1)));
        Self { queue: sender }
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
        self.queue
            .send(Job {
                model,
                texts,
                reply,
                _held: held,
            })
            .await
            .map_err(|_| BatchError::Lost)?;
        answer.await.map_err(|_| BatchError::Lost)?
    }
}

/// Takes the next request, waits for a free slot (what arrives meanwhile queues up), then adds every
/// queued request for the same model that fits, and scores the run on a blocking thread.
async fn form_runs<M: BatchModel>(
    mut queue: mpsc::Receiver<Job<M>>,
    max_run_texts: usize,
    slots: usize,
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
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            score_run(run);
        });
    }
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
    let scored = model.score_batch(&texts);
    let elapsed = started.elapsed();
    metrics::histogram!("sentiflow_infer_http_run_texts_rows").record(texts.len() as f64);
    metrics::histogram!("sentiflow_infer_http_run_requests").record(run.len() as f64);
    let run_requests = run.len();
    match scored {
        Ok(rows) if rows.len() == texts.len() => {
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
        Ok(rows) => {
            let message = format!(
                "the model gave {} rows for {} texts",
                rows.len(),
                texts.len()
            );
            for job in run {
                let _ = job.reply.send(Err(BatchError::Model(message.clone())));
            }
        }
        Err(message) => {
            for job in run {
                let _ = job.reply.send(Err(BatchError::Model(message.clone())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Scores a text as its length in the first column, and records each run's size; runs of
    /// `delay` so that requests pile up behind a busy slot.
    struct Recorder {
        runs: Mutex<Vec<usize>>,
        delay: Duration,
        fail_on: Option<&'static str>,
    }

    impl Recorder {
        fn new(delay_ms: u64) -> Arc<Self> {
            Arc::new(Self {
                runs: Mutex::new(Vec::new()),
                delay: Duration::from_millis(delay_ms),
                fail_on: None,
            })
        }
    }

    impl BatchModel for Recorder {
        fn score_batch(&self, texts: &[String]) -> Result<Vec<ClassProbabilities>, String> {
            std::thread::sleep(self.delay);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_request_runs_at_once_on_its_own() {
        let model = Recorder::new(0);
        let batcher = PredictBatcher::spawn(256, 1, 16);
        let scored = batcher
            .score(Arc::clone(&model), texts(&["a", "bb"]), None)
            .await
            .unwrap();
        assert_eq!(scored.rows, vec![[1.0, 0.0, 0.0], [2.0, 0.0, 0.0]]);
        assert_eq!((scored.run_requests, scored.run_texts), (1, 2));
        assert_eq!(*model.runs.lock().unwrap(), vec![2]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_waiting_for_a_busy_slot_share_one_run_and_each_gets_its_own_rows() {
        let model = Recorder::new(50);
        let batcher = PredictBatcher::spawn(256, 1, 64);
        // The first takes the only slot; the 20 behind it arrive while it runs.
        let first = tokio::spawn({
            let (batcher, model) = (batcher.clone(), Arc::clone(&model));
            async move { batcher.score(model, texts(&["x"]), None).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiting: Vec<_> = (1..=20)
            .map(|length| {
                let (batcher, model) = (batcher.clone(), Arc::clone(&model));
                tokio::spawn(async move {
                    let text = "y".repeat(length);
                    batcher.score(model, vec![text.clone(), text], None).await
                })
            })
            .collect();
        assert_eq!(first.await.unwrap().unwrap().run_requests, 1);
        for (index, task) in waiting.into_iter().enumerate() {
            let scored = task.await.unwrap().unwrap();
            let length = (index + 1) as f32;
            assert_eq!(scored.rows, vec![[length, 0.0, 0.0]; 2], "request {index}");
        }
        let runs = model.runs.lock().unwrap().clone();
        assert_eq!(
            runs.iter().sum::<usize>(),
            41,
            "every text scored once: {runs:?}"
        );
        assert!(
            runs.len() <= 3,
            "the 20 waiting requests were merged into one or two runs: {runs:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_holds_at_most_the_cap_and_one_model() {
        let model = Recorder::new(30);
        let other = Recorder::new(0);
        let batcher = PredictBatcher::spawn(5, 1, 64);
        let busy = tokio::spawn({
            let (batcher, model) = (batcher.clone(), Arc::clone(&model));
            async move { batcher.score(model, texts(&["busy"]), None).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut waiting = Vec::new();
        for (model, words) in [
            (&model, texts(&["a", "b"])),
            (&model, texts(&["c", "d"])),
            (&model, texts(&["e", "f"])),
            (&other, texts(&["g"])),
            (&model, texts(&["h", "i", "j", "k", "l", "m", "n"])),
        ] {
            let (batcher, model) = (batcher.clone(), Arc::clone(model));
            waiting.push(tokio::spawn(async move {
                batcher.score(model, words, None).await
            }));
            tokio::task::yield_now().await;
        }
        busy.await.unwrap().unwrap();
        for task in waiting {
            task.await.unwrap().unwrap();
        }
        let runs = model.runs.lock().unwrap().clone();
        assert_eq!(runs.iter().sum::<usize>(), 14, "{runs:?}");
        assert!(
            runs.iter().all(|&run| run <= 5 || run == 7),
            "at most 5 texts a run, a larger request alone: {runs:?}"
        );
        assert_eq!(
            *other.runs.lock().unwrap(),
            vec![1],
            "the other model ran apart"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_run_fails_each_of_its_requests_and_the_next_run_goes_on() {
        let model = Arc::new(Recorder {
            runs: Mutex::new(Vec::new()),
            delay: Duration::from_millis(30),
            fail_on: Some("poison"),
        });
        let batcher = PredictBatcher::spawn(256, 1, 16);
        let busy = tokio::spawn({
            let (batcher, model) = (batcher.clone(), Arc::clone(&model));
            async move { batcher.score(model, texts(&["ok"]), None).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let poisoned = tokio::spawn({
            let (batcher, model) = (batcher.clone(), Arc::clone(&model));
            async move { batcher.score(model, texts(&["poison"]), None).await }
        });
        let neighbour = tokio::spawn({
            let (batcher, model) = (batcher.clone(), Arc::clone(&model));
            async move { batcher.score(model, texts(&["fine"]), None).await }
        });
        assert!(busy.await.unwrap().is_ok());
        let expected = Err(BatchError::Model("cannot score \"poison\"".to_owned()));
        assert_eq!(poisoned.await.unwrap(), expected);
        assert_eq!(neighbour.await.unwrap(), expected, "its run failed with it");
        let after = batcher
            .score(Arc::clone(&model), texts(&["later"]), None)
            .await
            .unwrap();
        assert_eq!(after.rows, vec![[5.0, 0.0, 0.0]]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_request_holds_is_released_when_its_run_is_over() {
        let model = Recorder::new(50);
        let batcher = PredictBatcher::spawn(256, 1, 16);
        let token = Arc::new(());
        let held: Held = Box::new(Arc::clone(&token));
        let task = tokio::spawn({
            let (batcher, model) = (batcher.clone(), Arc::clone(&model));
            async move { batcher.score(model, texts(&["a"]), Some(held)).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The client went away: the request still holds its slot until the run ends.
        task.abort();
        assert_eq!(Arc::strong_count(&token), 2, "held while the run goes on");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(Arc::strong_count(&token), 1, "released after it");
    }
}
