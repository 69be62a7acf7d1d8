// The README's TypeScript examples as a user would paste them: every ```ts block is type-checked
// against the package's sources (strict) and run, with the names the text around it assumes (a
// model, batches) given to it, so the README cannot drift from the API. A block that needs
// what this machine lacks (a CUDA device, the Fashion-MNIST files) is type-checked and not run.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as ts from 'typescript';
import * as lib from '../lib';
import { ROOT } from './helpers/dist';

interface Block {
  line: number;
  code: string;
}

function readmeBlocks(): Block[] {
  const lines = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8').split('\n');
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() !== '```ts') continue;
    const start = i + 1;
    while (++i < lines.length && lines[i].trim() !== '```');
    blocks.push({ line: start + 1, code: lines.slice(start, i).join('\n') });
  }
  return blocks;
}

// What the text around a block has already made: declared for the type check, made for the run.
const PRELUDE_TYPES = `
declare const model: ad.nn.ResNet;
declare const firstImages: ad.Tensor, firstLabels: ad.Tensor;
declare const batches: { images: ad.Tensor; labels: ad.Tensor }[];
`;
function prelude(device: lib.DeviceSpec): Record<string, unknown> {
  const model = lib.nn.resnet('resnet20', { act: 'relu', inChannels: 1, smallInput: true, device });
  // a batch of 64 Fashion-MNIST-shaped images and their labels (as a tensor: the CUDA graph example's)
  const batch = () => ({ images: lib.randn([64, 1, 28, 28]), labels: lib.tensor(Float32Array.from({ length: 64 }, (_, i) => i % 10), [64]) });
  const first = batch();
  return { model, firstImages: first.images, firstLabels: first.labels, batches: [batch(), batch()] };
}

/** The block as a module: its imports first, the rest in an async function (top-level await). */
function asModule(code: string): string {
  const lines = code.split('\n');
  const imports = lines.filter((l) => /^import\s/.test(l));
  const body = lines.filter((l) => !/^import\s/.test(l));
  const needsAd = !imports.some((l) => /\bas ad\b/.test(l));
  return [
    ...(needsAd ? ["import * as ad from 'adashift';"] : []),
    ...imports,
    PRELUDE_TYPES,
    'export async function __main() {',
    ...body,
    '}',
  ].join('\n');
}

const blocks = readmeBlocks();
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'adashift-readme-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

test('the README has TypeScript examples', () => {
  expect(blocks.length).toBeGreaterThanOrEqual(4);
});

test('every example type-checks against the package (strict)', () => {
  const files = blocks.map((b, i) => {
    const f = path.join(tmp, `block-${i + 1}-line-${b.line}.ts`);
    fs.writeFileSync(f, asModule(b.code));
    return f;
  });
  const program = ts.createProgram(files, {
    strict: true,
    noEmit: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.CommonJS,
    moduleResolution: ts.ModuleResolutionKind.Node10,
    esModuleInterop: true,
    skipLibCheck: true,
    lib: ['lib.es2022.d.ts', 'lib.esnext.disposable.d.ts'],
    types: ['node'],
    typeRoots: [path.join(ROOT, 'node_modules', '@types')],
    baseUrl: ROOT,
    paths: { adashift: ['lib/index.ts'] },
  });
  const problems = ts
    .getPreEmitDiagnostics(program)
    .filter((d) => d.file && files.includes(path.resolve(d.file.fileName)))
    .map((d) => `${path.basename(d.file!.fileName)}: ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`);
  expect(problems).toEqual([]);
});

const cudaUsable = lib.backendInfo().cudaUsable;
const fashionMnist = fs.existsSync('/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz');

describe.each(blocks.map((b, i) => [i + 1, b] as const))('example %d', (_n, block) => {
  const needs = [
    ...(/device: 'cuda'/.test(block.code) && !cudaUsable ? ['a CUDA device'] : []),
    ...(/train\(|loadDataset\('fashion-mnist'/.test(block.code) && !fashionMnist ? ['Fashion-MNIST in /usr/share/datasets'] : []),
  ];
  (needs.length ? test.skip : test)(`(README line ${block.line}) runs${needs.length ? ` (needs ${needs.join(', ')})` : ''}`, async () => {
    const js = ts.transpileModule(asModule(block.code), { compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true } }).outputText;
    // train() as the example calls it, cut to a few batches into a temp folder: the option and
    // callback names are the example's, the budget is not
    const pkg = { ...lib, train: (o: lib.TrainOptions, cb?: lib.TrainCallbacks) => lib.train({ ...o, maxBatches: 2, limitTest: 64, out: path.join(tmp, 'train'), overwrite: true }, cb) };
    const mod = { exports: {} as { __main?: () => Promise<void> } };
    const given = prelude(/device: 'cuda'/.test(block.code) ? 'cuda' : 'cpu');
    const log = jest.spyOn(console, 'log').mockImplementation(() => undefined);
    try {
      new Function('require', 'exports', 'module', ...Object.keys(given), js)((id: string) => (id === 'adashift' ? pkg : require(id)), mod.exports, mod, ...Object.values(given));
      await mod.exports.__main!();
    } finally {
      log.mockRestore();
      (given.model as lib.nn.ResNet).dispose();
      for (const t of [given.firstImages, given.firstLabels, ...(given.batches as { images: lib.Tensor; labels: lib.Tensor }[]).flatMap((b) => [b.images, b.labels])]) (t as lib.Tensor).dispose();
    }
  });
});
