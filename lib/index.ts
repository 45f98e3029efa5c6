/**
 * transcoders: train transcoders on language models and find interpretable feature circuits.
 * Path through the library: prompt -> tokens (tokenizer/) -> forward (models/) -> transcoder ->
 * attribution -> graph -> export.
 */
export { TranscodersError, InvalidArgumentError, FormatError, TorchError, NativeLoadError, IoError, NumericalError, CancelledError, DistributedError } from './errors.js';
export { Tensor, DTYPES, type DType, type TensorData, type TensorSource, type FromOptions } from './tensor.js';
export { setNumThreads, getNumThreads, workerNumThreads, torchInfo, type TorchInfo } from './runtime.js';
export { deviceKey, deviceQueueEnabled, deviceQueueStats, resetDeviceQueueStats, type DeviceQueueStats } from './device-queue.js';
export {
  readSafetensorsHeader,
  readSafetensors,
  loadSafetensorsTensors,
  writeSafetensors,
  type SafetensorsHeader,
  type SafetensorsEntry,
  type RawTensor,
} from './io/safetensors.js';
export {
  Tokenizer,
  loadFolderTokenizer,
  type TokenizerOptions,
  type EncodeOptions,
  type BosDecision,
  type BosSource,
  type SpecialTokenIds,
} from './tokenizer/tokenizer.js';
export {
  hubCacheLocation,
  parseHubReference,
  parseHfUri,
  resolveModelSource,
  resolveTranscoderSource,
  resolveHubSnapshot,
  resolveHubPath,
  resolveHfUri,
  repoIdOfCachePath,
  type HubCacheLocation,
  type HubReference,
  type HubSnapshot,
  type HubCacheOptions,
} from './io/hf-cache.js';
export { parseNpy, readNpz, type NpyArray } from './io/npy.js';
export { readModelConfig, parseModelConfig, parameterCount, type ModelConfig, type Architecture, type Activation } from './models/config.js';
export {
  loadModel,
  Model,
  PROCESSINGS,
  MODEL_DTYPES,
  PADDINGS,
  type LoadModelOptions,
  type Processing,
  type ModelDType,
  type MlpReplacement,
  type RunOptions,
  type RunOutput,
  type Padding,
  type TokensInput,
} from './models/model.js';
export { selectHooks } from './models/hooks.js';
export {
  readDocuments,
  TokenPacker,
  packDocuments,
  writeTokenFile,
  readTokenFileHeader,
  readTokenRows,
  tokenizeToFile,
  type BosMode,
  type TokenFileHeader,
  type TokenizeToFileOptions,
  type TokenizeResult,
} from './data/index.js';
export { mlpHooks, validateTranscoderConfig, TRANSCODER_ARCHS, type TranscoderArch, type TranscoderConfig } from './transcoders/config.js';
export {
  Transcoder,
  geometricMedian,
  parameterNames,
  type ParameterName,
  type PlacementOptions,
  type SparseActivations,
  type LossOptions,
  type BiasInit,
} from './transcoders/transcoder.js';
export { StepTrainer, resolveTrainOptions, type TrainOptions, type StepMetrics, type Recipe, type ScheduleName } from './transcoders/step-trainer.js';
export { trainTranscoders, type TrainRunOptions, type TrainProgress, type TrainResult } from './transcoders/training-run.js';
export { writeActivationCache, readCacheMeta, type CacheMeta, type CacheOptions } from './transcoders/activation-cache.js';
export { evaluate, type Evaluation, type LayerEvaluation, type EvaluateOptions } from './transcoders/evaluate.js';
export { saveTranscoder, loadNativeTranscoder, isNativeTranscoder } from './transcoders/formats/native.js';
export { loadTranscoderSet } from './transcoders/transcoder-set.js';
export { lazyTranscoder, lazyCrossLayer, type LazyTranscoder, type LazyCrossLayerTranscoder, type LazyLayout } from './transcoders/lazy.js';
export {
  CrossLayerTranscoder,
  crossLayerHooks,
  crossLayerParameterShapes,
  stackLayers,
  validateCrossLayerConfig,
  type CrossLayerConfig,
  type CrossLayerLossOptions,
  type CrossLayerBatchStats,
} from './transcoders/cross-layer.js';
export { CrossLayerTrainer, resolveCrossLayerTrainOptions, type CrossLayerTrainOptions, type CrossLayerStepMetrics } from './transcoders/cross-layer-trainer.js';
export { evaluateCrossLayer, type CrossLayerEvaluation, type CrossLayerLayerEvaluation } from './transcoders/evaluate-cross-layer.js';
export {
  saveCrossLayerTranscoder,
  loadCrossLayerTranscoder,
  exportCircuitTracerCrossLayer,
  isNativeCrossLayer,
  isCircuitTracerCrossLayer,
} from './transcoders/formats/cross-layer.js';
export {
  loadTranscoder,
  detectTranscoderFormat,
  exportSaeLens,
  exportCircuitTracer,
  exportCircuitTracerSet,
  exportSparsify,
  loadPaperTranscoder,
  loadGemmaScopeTranscoder,
  loadGemmaScope2Transcoder,
  type TranscoderFormat,
  type ForeignLoadOptions,
} from './transcoders/formats/index.js';
export {
  featureConnections,
  deEmbedding,
  logitEffects,
  logitEffectsOn,
  topkConnections,
  mergeConnections,
  type FeatureConnections,
  type ConnectionList,
  type Connection,
  type FeatureScore,
  type TokenEffects,
  type TokenScore,
  type TopkConnectionsOptions,
  type TopkConnectionsResult,
} from './circuits/connections.js';
export { ReplacementModel, type Placement, type ReplaceOptions, type LoadReplacementOptions } from './circuits/replacement-model.js';
export { Attribution, type AttributionNode, type Sublayer } from './circuits/attribution.js';
export { greedyPaths, isTerminal, SEARCH_DEFAULTS, type Path, type SearchOptions, type NodeFilter } from './circuits/search.js';
export { pathsToGraph, sumOverTokens, nodeId, GRAPH_SCHEMA, type CircuitGraph, type GraphNode, type GraphEdge, type GraphOptions } from './circuits/graph.js';
export { findCircuit, attribute, rootNode, type Circuit, type CircuitRoot, type CircuitOptions } from './circuits/find-circuit.js';
export { writeGraph, graphJson, type GraphFiles } from './circuits/export.js';
export { formatPaths, toDot, toHtml, graphSvg } from './circuits/render.js';
export { meanInputTimesGradient, type MeanIxgOptions } from './circuits/mean-ixg.js';
export { saveModel } from './models/save.js';
export { runDemo, DEMO_MODEL_DIR, type DemoOptions, type DemoResult, type DemoProgress, type DemoStage, type CircuitResult } from './demo/demo.js';
export { SHIPPED_MODEL_DIR } from './models/shipped.js';
export {
  NODE_KIND_CODES, NODE_KIND_ORDER, INPUT_KINDS, validateAttributionGraph, nodeRanges, describeNode, logitWeights, toSparseAdjacency, toDenseValues, findCycle,
  type NodeKind, type GraphNode as AttributionGraphNode, type Adjacency, type DenseAdjacency, type SparseAdjacency, type AttributionGraph, type NodeRange, type NodeRanges,
} from './graphs/graph.js';
export {
  normalizeRows, computeInfluence, nodeInfluence, edgeScores, findThreshold, pruneGraph, cumulativeShares, graphScores, PRUNE_DEFAULTS, ROW_SUM_FLOOR, MAX_INFLUENCE_ROUNDS,
  type NormalizedRows, type InfluenceOptions, type PruneOptions, type PruneResult, type GraphScores,
} from './graphs/prune.js';
export {
  buildGraphJson, writeGraphFiles, validateGraphJson, checkSlug, cantorPairing, escapeToken, FEATURE_TYPES, GRAPH_JSON_SCHEMA_VERSION, GRAPH_METADATA_FILE,
  type GraphJson, type GraphJsonMetadata, type GraphJsonNode, type GraphJsonLink, type GraphJsonOptions, type WriteGraphFilesOptions, type GraphFilesWritten,
} from './graphs/graph-json.js';
export { writeAdjacencyFile, ADJACENCY_FILE_FORMAT, ADJACENCY_FILE_VERSION, DEFAULT_MAX_DENSE_BYTES, type AdjacencyFileOptions } from './graphs/adjacency-file.js';
export { attributionGraph, topLogitTargets, ATTRIBUTE_DEFAULTS, type AttributeOptions, type AttributedGraph, type GraphTargets } from './graphs/attribute.js';
export { lazyCrossLayerGraph, compactCrossLayer, type CompactCrossLayer } from './graphs/lazy-cross-layer.js';
export {
  collectFeatureStats, writeFeatureCards, featureCard, layerLogitEffects, layerDeEmbeddings,
  type FeaturePass, type FeaturePassOptions, type FeatureCardJson, type FeatureExample, type FeatureCardOptions, type LayerTokenEffects,
} from './features/dashboards.js';
export { FeatureFiles, FEATURE_INDEX_FILE, FEATURE_RUN_FILE, type FeatureIndexEntry } from './features/feature-files.js';
export { FeatureStats, type FeatureStatsOptions, type FeatureStatsArrays } from './features/feature-stats.js';
export { createServer, listen, checkBindable, type ServerOptions } from './service/server.js';
export { writeViewerFolder, viewerAssetsDir, cardsOfGraphs, type ViewerFolderOptions } from './graphs/viewer-folder.js';
export {
  intervene,
  steer,
  stepInterventions,
  type FeatureIntervention,
  type InterventionOptions,
  type InterventionResult,
  type SteeringIntervention,
  type SteerOptions,
  type SteerResult,
  type SteerStep,
} from './circuits/interventions.js';
export { circuitToAttributionGraph, type CircuitAsGraph } from './graphs/from-circuit.js';
export { ProcessGroup, joinOptionsFromEnv, type JoinOptions, type ReduceOp } from './distributed/process-group.js';
