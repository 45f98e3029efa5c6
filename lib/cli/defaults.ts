/** Where the CLI finds what the package ships. */
import { fileURLToPath } from 'node:url';

/** The small model the package ships (models/tiny-gpt2), used when no model folder is given. */
export const DEFAULT_MODEL_DIR = fileURLToPath(new URL('../../models/tiny-gpt2', import.meta.url));
