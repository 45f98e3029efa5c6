/**
 * The demo's building blocks, for scripts/train-demo-model.mjs and the tests: the shipped model's
 * training, its task generators and the greater-than experiment. Not part of the public API
 * (lib/index.ts exports runDemo only).
 */
export { runDemo, DEMO_MODEL_DIR, DEMO_TRANSCODERS, trainDemoTranscoders, type DemoOptions, type DemoTranscoderSpec } from './demo.js';
export { trainDemoModel, DEMO_MODEL, learningRate, type DemoModelSpec, type TrainingLog, type TrainDemoModelOptions } from './train-model.js';
export { greaterThan, greaterThanRows, yearTokenIds, type GreaterThanOptions, type GreaterThanResult } from './greater-than.js';
export { greaterThanExperiment, withoutFeatures, onlyFeatures, onlyNeurons, activationStats, type GreaterThanExperiment, type ExperimentOptions } from './ablation.js';
export { featureCards, type FeatureCard, type FeatureRef } from './features.js';
export { demoTokenizerJson } from './tokenizer.js';
export { examples, packedRows, taskExample, greaterThanPrompt, greaterThanSentence, TASK_MIX, type TaskName } from './tasks.js';
