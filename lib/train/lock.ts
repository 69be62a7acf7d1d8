// One writer per output folder: train and compare hold <out>/.adashift.lock while they write a
// run there, so a second process given the same folder stops at once instead of interleaving
// its files with the first's (two runs that both report success, and one of them lost).
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { AdaShiftError } from '../errors';
import { processRuns } from '../io/files';

const LOCK_NAME = '.adashift.lock';

interface LockInfo {
  pid: number;
  host: string;
  started: string;
  what: string;
}

export interface RunLock {
  release(): void;
}

/** Whether the process that wrote a lock still runs (on this host; another host's is assumed to). */
function holderRuns(info: LockInfo): boolean {
  return info.host !== os.hostname() || processRuns(info.pid);
}

/** A lock file written in the last few seconds (its writer may not have filled it in yet). */
function isFresh(file: string): boolean {
  try {
    return Date.now() - fs.statSync(file).mtimeMs < 5000;
  } catch {
    return false;
  }
}

function readLock(file: string): LockInfo | null {
  try {
    const v = JSON.parse(fs.readFileSync(file, 'utf8')) as LockInfo;
    return Number.isSafeInteger(v.pid) && typeof v.host === 'string' ? v : null;
  } catch {
    return null; // unreadable or half-written: treated as a lock of a process that is gone
  }
}

/**
 * Takes dir's lock for `what` (e.g. 'train'), or throws ERR_IO naming the process that holds it.
 * A lock whose process no longer runs (killed) is taken over. The same process may hold the
 * lock of several folders (compare's and its runs'); asking twice for one folder is refused.
 */
export function acquireRunLock(dir: string, what: string): RunLock {
  const file = path.join(dir, LOCK_NAME);
  const info: LockInfo = { pid: process.pid, host: os.hostname(), started: new Date().toISOString(), what };
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = fs.openSync(file, 'wx', 0o644);
      try {
        fs.writeSync(fd, JSON.stringify(info) + '\n');
      } finally {
        fs.closeSync(fd);
      }
      break;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'EEXIST') throw new AdaShiftError('ERR_IO', `${dir}: cannot take the folder's lock (${code ?? (e as Error).message})`);
      const held = readLock(file);
      if (!held && isFresh(file)) throw new AdaShiftError('ERR_IO', `${dir} is in use: another process is taking its lock now; write to another folder`);
      if (held && holderRuns(held)) {
        const self = held.pid === process.pid && held.host === info.host;
        throw new AdaShiftError('ERR_IO', `${dir} is in use: ${self ? 'this process' : `another adashift process (pid ${held.pid} on ${held.host})`} has been writing a ${held.what} there since ${held.started}; wait for it to end, or write to another folder (if no such process writes there, its id was reused: remove ${file})`);
      }
      // its process is gone (killed): the lock is stale; another process may take it first
      if (attempt >= 3) throw new AdaShiftError('ERR_IO', `${dir}: cannot take the folder's lock (${file} keeps coming back)`);
      fs.rmSync(file, { force: true });
    }
  }
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    process.off('exit', release);
    const now = readLock(file);
    if (now && now.pid === info.pid && now.started === info.started) fs.rmSync(file, { force: true });
  };
  // a process that exits without unwinding (process.exit in a callback) still frees it
  process.on('exit', release);
  return { release };
}
