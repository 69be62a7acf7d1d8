// Provenance of results: the CPU's identity beyond its marketing name.
import * as fs from 'fs';
import { cpuDetails, cpuLabel, environment } from '../lib/provenance';

describe('cpuDetails', () => {
  const linux = fs.existsSync('/proc/cpuinfo');

  (linux ? test : test.skip)('reads vendor, family/model, vector ISA and caches on Linux', () => {
    const d = cpuDetails();
    const text = fs.readFileSync('/proc/cpuinfo', 'utf8');
    if (/^vendor_id\s*:/m.test(text)) {
      // x86: every field is in /proc/cpuinfo; compare with a plain reading of the first entry
      expect(d.vendor).toBe(/^vendor_id\s*:\s*(\S+)/m.exec(text)![1]);
      expect(d.family).toBe(Number(/^cpu family\s*:\s*(\d+)/m.exec(text)![1]));
      expect(d.model).toBe(Number(/^model\s*:\s*(\d+)/m.exec(text)![1]));
      const flags = /^flags\s*:\s*(.*)$/m.exec(text)![1].split(' ');
      expect(d.isa.includes('avx2')).toBe(flags.includes('avx2'));
      expect(d.isa.includes('avx512f')).toBe(flags.includes('avx512f'));
    }
    const l2 = '/sys/devices/system/cpu/cpu0/cache/index2/size';
    if (fs.existsSync(l2)) expect(d.cacheBytes.l2).toBe(parseInt(fs.readFileSync(l2, 'utf8'), 10) * 1024);
  });

  test('goes into every result environment', () => {
    const env = environment('cpu');
    expect(env.cpuDetails).toEqual(cpuDetails());
  });
});

describe('cpuLabel', () => {
  test('names generation, widest vector ISA and caches', () => {
    const d = { vendor: 'AuthenticAMD', family: 25, model: 17, stepping: 1, isa: ['avx512f', 'avx2', 'fma'], cacheBytes: { l1d: 32768, l2: 1048576, l3: 33554432 } };
    expect(cpuLabel('AMD EPYC', d)).toBe('AMD EPYC (family 25 model 17, avx512f, L2 1 MiB, L3 32 MiB)');
    expect(cpuLabel('AMD EPYC', { isa: [], cacheBytes: { l2: 512 * 1024 } })).toBe('AMD EPYC (L2 512 KiB)');
  });
  test('falls back to the name alone', () => {
    expect(cpuLabel('Some CPU', undefined)).toBe('Some CPU');
    expect(cpuLabel('Some CPU', { isa: [], cacheBytes: {} })).toBe('Some CPU');
  });
});

describe('adashift doctor', () => {
  test('names the CPU backend with the CPU beyond its model string', () => {
    // imported here: the CLI module parses argv only when run as the program
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const { doctorText } = require('../lib/cli') as { doctorText: () => string };
    const os = require('os') as typeof import('os');
    const line = doctorText().split('\n').find((l) => l.startsWith('CPU backend: available'));
    expect(line).toBeDefined();
    expect(line).toContain(cpuLabel(os.cpus()[0]?.model ?? 'an unknown CPU', cpuDetails()));
  });

  test('--json has what the text says: version, Node, platform, CPU, backends, default device', () => {
    const { doctorInfo, doctorText } = require('../lib/cli') as typeof import('../lib/cli');
    const info = doctorInfo();
    expect(info).toMatchObject({ version: require('../package.json').version, node: process.version, platform: `${process.platform}-${process.arch}` });
    const text = doctorText();
    expect(text).toContain(`adashift ${info.version} on Node ${info.node} (${info.platform})`);
    expect(text).toContain(`on ${info.cpu}`);
    expect(text).toContain(`default device: ${info.defaultDevice}`);
    expect(Object.keys(info)).toEqual(expect.arrayContaining(['cudaCompiled', 'cudaUsable', 'devices', 'cpuThreads', 'defaultDevice', 'adashiftDeviceEnv']));
  });
});
