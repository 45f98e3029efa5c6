/**
 * One process of bench/train_distributed.ts: joins the group from the launcher variables (when
 * WORLD_SIZE > 1), trains the run described by argv[2] (JSON) with trainTranscoders and prints, on
 * rank 0, one JSON line: the step times and the seconds spent in collectives per step.
 */
import { loadModel, setNumThreads } from '../lib/index.js';
import { ProcessGroup } from '../lib/distributed/process-group.js';
import { trainTranscoders } from '../lib/transcoders/training-run.js';

interface WorkerSpec {
  model: string;
  tokenFile: string;
  out: string;
  layers: number[];
  dSae: number;
  batchSize: number;
  steps: number;
  threads: number;
}

const spec = JSON.parse(process.argv[2]!) as WorkerSpec;
setNumThreads(spec.threads);
const world = Number(process.env.WORLD_SIZE ?? 1);
const group = world > 1 ? await ProcessGroup.join({ timeoutMs: 600_000 }) : null;
try {
  const model = await loadModel(spec.model, { processing: 'none' });
  const stepEnds: number[] = [];
  const collective: number[] = [];
  await trainTranscoders({
    data: { tokenFile: spec.tokenFile, model },
    layers: spec.layers,
    arch: 'relu',
    dSae: spec.dSae,
    batchSize: spec.batchSize,
    steps: spec.steps,
    noShuffle: true,
    biasInit: 'zeros',
    logEvery: 1,
    checkpointEveryTokens: spec.steps * spec.batchSize * 10,
    out: spec.out,
    ...(group && { processGroup: group }),
    onProgress: (p) => {
      stepEnds.push(performance.now());
      collective.push(p.collectiveSeconds ?? 0);
    },
  });
  if ((group?.rank ?? 0) === 0) console.log(JSON.stringify({ stepEnds, collective }));
} finally {
  group?.leave();
}
