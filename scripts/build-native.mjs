#!/usr/bin/env node
// Builds the native addon (build/Release/transcoders.node) with cmake-js against a libtorch found in
// this order: env LIBTORCH (unzipped libtorch or a PyTorch wheel's torch/ folder), env Torch_DIR,
// the system libtorch. On Debian/Ubuntu as root with none found, installs Debian's libtorch with apt.
// Runs as the package's `install` script; `--rebuild` forces a clean build.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const SYSTEM_TORCH_CONFIGS = [
  '/usr/lib/x86_64-linux-gnu/cmake/Torch/TorchConfig.cmake',
  '/usr/lib/aarch64-linux-gnu/cmake/Torch/TorchConfig.cmake',
  '/usr/lib/cmake/Torch/TorchConfig.cmake',
  '/usr/local/lib/cmake/Torch/TorchConfig.cmake',
];
const OPENBLAS_LIBS = ['/usr/lib/x86_64-linux-gnu/libopenblas.so.0', '/usr/lib/aarch64-linux-gnu/libopenblas.so.0'];

function fail(message) {
  console.error(`\ntranscoders: cannot build the native addon.\n${message}\n`);
  process.exit(1);
}

function isDebianLike() {
  return existsSync('/etc/debian_version') && spawnSync('sh', ['-c', 'command -v apt-get'], { stdio: 'ignore' }).status === 0;
}

function installWithApt() {
  console.log('transcoders: no libtorch found; installing Debian\'s libtorch-dev, libgloo-dev and libopenblas0 with apt-get');
  const r = spawnSync('bash', [join(root, 'scripts', 'install-libtorch-apt.sh')], { stdio: 'inherit' });
  if (r.status !== 0) fail('scripts/install-libtorch-apt.sh failed (see the apt output above).');
}

/** Decides which libtorch to build against; returns the cmake-js -D options and a stamp. */
function resolveLibtorch() {
  const explicit = process.env.LIBTORCH;
  if (explicit) {
    const rootDir = resolve(explicit);
    const hasConfig = existsSync(join(rootDir, 'share', 'cmake', 'Torch', 'TorchConfig.cmake'));
    const hasLib = existsSync(join(rootDir, 'lib', 'libtorch.so')) || existsSync(join(rootDir, 'lib', 'libtorch.dylib'));
    if (!hasConfig && !hasLib) {
      fail(`LIBTORCH=${explicit} holds neither share/cmake/Torch/TorchConfig.cmake nor lib/libtorch.so.\n` +
        'Point LIBTORCH at an unzipped libtorch (the folder with include/ and lib/) or a PyTorch wheel\'s site-packages/torch folder.');
    }
    return { defines: [`--CDLIBTORCH_ROOT=${rootDir}`], stamp: `LIBTORCH=${rootDir}` };
  }
  const torchDir = process.env.Torch_DIR;
  if (torchDir) {
    if (!existsSync(join(torchDir, 'TorchConfig.cmake'))) fail(`Torch_DIR=${torchDir} has no TorchConfig.cmake.`);
    return { defines: [`--CDTorch_DIR=${resolve(torchDir)}`], stamp: `Torch_DIR=${resolve(torchDir)}` };
  }
  let system = SYSTEM_TORCH_CONFIGS.find((p) => existsSync(p));
  if (!system) {
    const root = typeof process.getuid === 'function' && process.getuid() === 0;
    if (isDebianLike() && root) {
      installWithApt();
      system = SYSTEM_TORCH_CONFIGS.find((p) => existsSync(p));
    }
    if (!system) {
      fail('No libtorch was found. Do one of:\n' +
        '  - on Debian/Ubuntu: sudo apt-get install libtorch-dev libgloo-dev libopenblas0   (CPU build)\n' +
        '  - download libtorch from pytorch.org, unzip it, and set LIBTORCH=/path/to/libtorch\n' +
        '  - point LIBTORCH at an installed PyTorch wheel: LIBTORCH=$(python3 -c "import torch,os;print(os.path.dirname(torch.__file__))")\n' +
        '  - or set Torch_DIR to the folder holding TorchConfig.cmake\n' +
        'then run `npm rebuild transcoders` (or `npm run build` in a clone).');
    }
  }
  // Debian's libtorch-dev does not pull in OpenBLAS: without it every matmul is ~30x slower.
  if (!OPENBLAS_LIBS.some((p) => existsSync(p))) {
    const root = typeof process.getuid === 'function' && process.getuid() === 0;
    if (isDebianLike() && root) installWithApt();
    else console.warn('transcoders: warning: libopenblas0 is not installed; matrix products will be very slow. Run: sudo apt-get install libopenblas0');
  }
  return { defines: [`--CDTorch_DIR=${dirname(system)}`], stamp: `system=${system}` };
}

function main() {
  if (process.env.TRANSCODERS_SKIP_NATIVE_BUILD === '1') {
    console.log('transcoders: TRANSCODERS_SKIP_NATIVE_BUILD=1, not building the addon');
    return;
  }
  const { defines, stamp } = resolveLibtorch();
  // cmake-js reuses build/ and ignores environment changes: rebuild when the libtorch choice changed.
  const stampFile = join(root, 'build', 'libtorch.stamp');
  const previous = existsSync(stampFile) ? readFileSync(stampFile, 'utf8') : null;
  const rebuild = process.argv.includes('--rebuild') || previous !== stamp;
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
  const args = [cmakeJs, rebuild ? 'rebuild' : 'compile', '--directory', root, ...defines];
  const jobs = process.env.CMAKE_BUILD_PARALLEL_LEVEL ?? String(Math.max(1, (globalThis.navigator?.hardwareConcurrency ?? 2)));
  console.log(`transcoders: building the native addon against ${stamp}`);
  const r = spawnSync(process.execPath, args, {
    stdio: 'inherit',
    cwd: root,
    env: { ...process.env, CMAKE_BUILD_PARALLEL_LEVEL: jobs, TORCH_INSTALL_PREFIX: '' },
  });
  if (r.status !== 0) {
    fail('cmake-js failed (see above). Common causes: a libtorch built with another C++ ABI, a CUDA libtorch without\n' +
      'its toolkit (set LIBTORCH so the libraries are linked directly), or a missing compiler (apt-get install g++ cmake).');
  }
  mkdirSync(dirname(stampFile), { recursive: true });
  writeFileSync(stampFile, stamp);
}

main();
