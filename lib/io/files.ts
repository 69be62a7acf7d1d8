// Reading files a user points the package at: only regular files are opened. A FIFO would block
// the read forever, a device such as /dev/zero would be read without end, a folder fails with
// an errno that does not say what was wrong.
import * as fs from 'fs';

/**
 * Why `file` cannot be read as a regular file (missing, a folder, a FIFO, a device, a symlink
 * loop), or null when it can. Symlinks are followed.
 */
export function notRegularFile(file: string): string | null {
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return 'no such file';
    if (code === 'ELOOP') return 'a loop of symbolic links';
    return `cannot read (${(e as Error).message})`;
  }
  if (st.isFile()) return null;
  const kind = st.isDirectory() ? 'a folder' : st.isFIFO() ? 'a FIFO (named pipe)' : st.isCharacterDevice() || st.isBlockDevice() ? 'a device' : st.isSocket() ? 'a socket' : 'not a regular file';
  return `${kind}, not a regular file`;
}

/** Whether process `pid` runs on this host (as any user: EPERM means it runs, as another). */
export function processRuns(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
