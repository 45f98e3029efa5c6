/**
 * Child process of `npm run fuzz` (scripts/fuzz.mjs): runs one parser's inputs and reports each
 * one's start and outcome over IPC, so that the parent can tell which input crashed the process or
 * hung, kill it, and restart from the next one. With `dump`, writes an input's files instead of
 * running it (the parent saves crashing and hanging inputs this way).
 */
import { join } from 'node:path';
import { rngFor, runCampaign } from './campaign.js';
import { inputOf, makeTargets, writeCase } from './targets.js';

interface Job {
  parser: string;
  seed: number;
  start: number;
  count: number;
  work: string;
  dump?: { index: number; dir: string };
}

process.once('message', (job: Job) => {
  void (async () => {
    const [target] = await makeTargets(join(job.work, `seeds-${process.pid}`), [job.parser]);
    if (!target) throw new Error(`unknown parser ${job.parser}`);
    if (job.dump) {
      writeCase(job.dump.dir, inputOf(target, job.dump.index, rngFor(job.parser, job.seed)));
      process.send!({ type: 'dumped' }, () => process.exit(0));
      return;
    }
    // TRANSCODERS_FUZZ_INJECT=crash@N,hang@M makes input N abort the process and M spin forever:
    // the harness's own check that crashes and hangs are caught, saved and survived.
    const inject = new Map((process.env.TRANSCODERS_FUZZ_INJECT ?? '').split(',').filter(Boolean).map((s) => {
      const [what, at] = s.split('@');
      return [Number(at), what] as const;
    }));
    let maxRss = 0;
    await runCampaign(target, join(job.work, `run-${process.pid}`), job.seed, job.start, job.count, {
      // Waits until the parent has the index: a crash right after must still be attributed to it.
      before: (index) =>
        new Promise<void>((resolve) =>
          process.send!({ type: 'start', index }, () => {
            if (inject.get(index) === 'crash') process.abort();
            if (inject.get(index) === 'hang') for (;;);
            resolve();
          }),
        ),
      after: (index, outcome, ms, message) => {
        maxRss = Math.max(maxRss, process.memoryUsage().rss);
        process.send!({ type: 'done', index, outcome, ms, message, rss: maxRss });
      },
    });
    process.send!({ type: 'finished' }, () => process.exit(0));
  })();
});
