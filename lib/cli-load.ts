// Imported first by the command line: an error thrown while the package loads (a refused
// ADASHIFT_* variable, an addon that cannot load) is reported as the command line reports every
// error, one line and exit status 1, not as a stack trace. Other uncaught errors keep Node's
// report. Only when the command line is the program: a script or test that imports cli.ts for
// its exports keeps its own handling of uncaught errors.
import { AdaShiftError } from './errors';

if (require.main && /[\\/]cli\.[jt]s$/.test(require.main.filename)) {
  process.on('uncaughtException', (e: Error & { code?: string }) => {
    if (e instanceof AdaShiftError) process.stderr.write(`adashift: ${e.message} (${e.code})\n`);
    else process.stderr.write(`${e?.stack ?? String(e)}\n`);
    process.exit(1);
  });
}
