//! Ordered fan-out of per-item text work (normalising, tokenizing) over scoped threads, shared by
//! ingest's transform and the encoder tokenizer.

/// `f` of every item, in input order, on up to `threads` scoped threads, each given at least
/// `min_per_thread` items (fewer items stay on the caller's thread: spawning would cost more than it
/// saves). A panic in `f` resumes on the caller.
pub fn map_ordered<T, R, F>(items: &[T], threads: usize, min_per_thread: usize, f: F) -> Vec<R>
where
    T: Sync,
    R: Send,
    F: Fn(&T) -> R + Sync,
{
    let threads = threads
        .max(1)
        .min(items.len().div_ceil(min_per_thread.max(1)));
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let parts: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<_>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|part| {
                part.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::map_ordered;

    #[test]
    fn keeps_input_order_on_any_thread_count() {
        let items: Vec<u32> = (0..1000).collect();
        let expected: Vec<u32> = items.iter().map(|item| item * 3).collect();
        for threads in [0, 1, 2, 3, 8, 64] {
            assert_eq!(
                map_ordered(&items, threads, 32, |item| item * 3),
                expected,
                "{threads} threads"
            );
        }
        assert!(map_ordered(&[] as &[u32], 4, 32, |item| *item).is_empty());
    }

    #[test]
    fn small_inputs_stay_on_the_calling_thread() {
        let caller = std::thread::current().id();
        let items = [1, 2, 3];
        let ran_on = map_ordered(&items, 8, 32, |_| std::thread::current().id());
        assert!(ran_on.iter().all(|id| *id == caller));
        let many: Vec<u32> = (0..256).collect();
        let ran_on = map_ordered(&many, 4, 32, |_| std::thread::current().id());
        assert!(ran_on.iter().any(|id| *id != caller), "256 items fan out");
    }
}
