/** What `transcoders demo` produces (also written as demo.json); shared by the pipeline and the report. */
import type { CircuitGraph } from '../circuits/graph.js';
import type { Evaluation } from '../transcoders/evaluate.js';
import type { GreaterThanExperiment } from './ablation.js';
import type { FeatureCard } from './features.js';
import type { DemoViewer } from './viewer.js';

export type DemoStage = 'data' | 'train' | 'evaluate' | 'circuit' | 'experiment' | 'features' | 'graph' | 'report';

export interface CircuitResult {
  /** What the search started from, e.g. `logit["59"] - logit["20"] @ 12`. */
  rootLabel: string;
  graph: CircuitGraph;
  /** The text rendering of the paths (formatPaths). */
  pathsText: string;
  /** Paths of the deepest level, best first. */
  topPaths: { nodes: string[]; positions: number[]; contribution: number }[];
}

export interface DemoResult {
  out: string;
  report: string;
  model: string;
  transcodersDir: string;
  pretrained: boolean;
  prompt: string;
  /** YY of the prompt. */
  startYear: number;
  tokens: string[];
  /** Position of the start year's two-digit token in the prompt. */
  startYearPosition: number;
  evaluation: Evaluation;
  training: { seconds: number; steps: number; tokens: number } | null;
  logitCircuit: CircuitResult;
  featureCircuit: CircuitResult;
  experiment: GreaterThanExperiment;
  features: FeatureCard[];
  /** The graphs in our viewer (viewer/index.html). */
  viewer: DemoViewer;
  seconds: Record<DemoStage, number>;
}
