// The thread pool with more threads than this machine has (ADASHIFT_POOL_THREADS): jobs then
// have fewer chunks than threads, so some workers sit a job out, which two threads never do.
// A worker that sat a job out once read the next job's chunk count before that job was
// published and ran a chunk of it early: a crash or a hang in about a third of short training
// runs with 16 threads. Each run is a child process (a crash must not take jest down) doing a
// few ResNet-20 training steps; every run must finish and give the bits of the 2-thread run
// (the kernels' results do not depend on the thread count).
import { spawnSync } from 'child_process';
import { ensureDist } from './helpers/dist';

function steps(poolThreads: number): { status: number | null; signal: string | null; out: string } {
  const dist = ensureDist();
  const script = `
    const a = require(${JSON.stringify(dist)});
    a.setDefaultDevice('cpu');
    a.manualSeed(1);
    const m = a.nn.resnet('resnet20', { act: 'adashift-b', numClasses: 10, inChannels: 1, smallInput: true });
    const opt = new a.optim.SGD(m.parameters(), { lr: 0.05, momentum: 0.9 });
    const x = a.randn([16, 1, 28, 28]);
    const y = Array.from({ length: 16 }, (_, i) => i % 10);
    (async () => {
      let loss = 0;
      for (let i = 0; i < 10; i++) {
        a.tidy(() => {
          const l = a.functional.crossEntropy(m.forward(x), y);
          l.backward();
          opt.step();
          opt.zeroGrad();
          loss = l.item();
        });
        // a pause between steps, as a data loader's makes: the pool's threads stop spinning and
        // sleep, and wake for the next job at different times
        await new Promise((r) => setTimeout(r, 1));
      }
      const w = m.conv1.weight.toFloat32Array();
      console.log(a.getNumThreads() + ' ' + loss + ' ' + Buffer.from(w.buffer, w.byteOffset, w.byteLength).toString('hex').slice(0, 64));
    })();`;
  const r = spawnSync(process.execPath, ['-e', script], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, ADASHIFT_POOL_THREADS: String(poolThreads), ADASHIFT_NUM_THREADS: '' },
  });
  return { status: r.status, signal: r.signal, out: (r.stdout || '').trim() + (r.stderr ? ` | ${r.stderr.trim().split('\n').slice(-2).join(' / ')}` : '') };
}

test('training steps on a pool of 16 threads finish every time, with the bits of 2 threads', () => {
  const ref = steps(2);
  expect(ref.status).toBe(0);
  const [, refLoss, refBits] = ref.out.split(' ');
  for (let run = 0; run < 16; run++) {
    const r = steps(16);
    expect(`run ${run}: status ${r.status} signal ${r.signal}`).toBe(`run ${run}: status 0 signal null`);
    const [threads, loss, bits] = r.out.split(' ');
    expect([threads, loss, bits]).toEqual(['16', refLoss, refBits]);
  }
}, 600_000);
