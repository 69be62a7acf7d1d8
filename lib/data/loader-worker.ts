// The data loader's prefetch worker: builds the batches the main thread asks for, reading the
// dataset images from the SharedArrayBuffer it was given, and transfers each batch back.
import { parentPort, workerData } from 'worker_threads';
import { BatchBuilder, WorkerInit, WorkerReply, WorkerRequest } from './loader';

if (parentPort) {
  const port = parentPort;
  const init = workerData as WorkerInit;
  const builder = new BatchBuilder(init.images, init.labels, init.plan);
  port.on('message', (m: WorkerRequest) => {
    let reply: WorkerReply;
    try {
      const b = builder.build(m.epoch, m.batch);
      reply = { id: m.id, ...b };
      port.postMessage(reply, [b.images.buffer as ArrayBuffer, b.labels.buffer as ArrayBuffer, b.indices.buffer as ArrayBuffer]);
    } catch (e) {
      reply = { id: m.id, error: e instanceof Error ? e.message : String(e) };
      port.postMessage(reply);
    }
  });
}
