/** Where the shipped model lives (trained by scripts/train-demo-model.mjs; see docs/demo-model.md). */
import { fileURLToPath } from 'node:url';

/** The shipped 3-layer greater-than GPT-2 (`models/greater-than`), the default model of the CLI. */
export const SHIPPED_MODEL_DIR = fileURLToPath(new URL('../../models/greater-than', import.meta.url));
