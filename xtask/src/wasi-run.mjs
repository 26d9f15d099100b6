// Runs a wasm32-wasip1 benchmark program under node's V8, the engine Envoy's
// Wasm runtime (envoy.wasm.runtime.v8) uses: `node wasi-run.mjs <file.wasm> [args]`.
// Imports outside WASI (proxy-wasm host calls linked in with the filter
// library) are never called by the benchmark examples; they throw if they are.
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import { argv, env } from 'node:process';

const wasi = new WASI({ version: 'preview1', args: argv.slice(2), env, returnOnExit: true });
const mod = await WebAssembly.compile(await readFile(argv[2]));
const imports = wasi.getImportObject();
for (const i of WebAssembly.Module.imports(mod)) {
  if (i.module === 'wasi_snapshot_preview1') continue;
  imports[i.module] ??= {};
  imports[i.module][i.name] = () => {
    throw new Error(`host call ${i.module}.${i.name} is not available here`);
  };
}
const instance = await WebAssembly.instantiate(mod, imports);
// The filter's toolchain exports `_initialize` beside `_start`; node's WASI
// refuses a module with both, so start it through `_start` alone.
const { memory, _start } = instance.exports;
// Exit at once, skipping the rest of node's shutdown.
process.exit(wasi.start({ exports: { memory, _start } }));
