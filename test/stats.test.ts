// Summary statistics used by the benchmarks and compare().
import { mean, median, std } from '../lib/stats';

test('median of odd and even counts, unsorted input left unchanged', () => {
  const xs = [5, 1, 4, 2, 3];
  expect(median(xs)).toBe(3);
  expect(xs).toEqual([5, 1, 4, 2, 3]);
  expect(median([4, 1, 3, 2])).toBe(2.5);
  expect(median([7])).toBe(7);
  // one slow outlier moves the mean, not the median
  expect(median([10, 10, 10, 10, 100])).toBe(10);
  expect(mean([10, 10, 10, 10, 100])).toBe(28);
});

test('sample standard deviation', () => {
  expect(std([2, 4, 4, 4, 5, 5, 7, 9])).toBeCloseTo(2.13809, 5); // n - 1 in the denominator
  expect(std([3])).toBe(0);
});
