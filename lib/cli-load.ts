// Imported first by the command line: an error thrown while the package loads (a refused
// ADASHIFT_* variable, an addon that cannot load) is reported as the command line reports every
// error, one line and exit status 1, not as a stack trace. Other uncaught errors keep Node's report.
import { AdaShiftError } from './errors';

process.on('uncaughtException', (e: Error & { code?: string }) => {
  if (e instanceof AdaShiftError) process.stderr.write(`adashift: ${e.message} (${e.code})\n`);
  else process.stderr.write(`${e?.stack ?? String(e)}\n`);
  process.exit(1);
});
