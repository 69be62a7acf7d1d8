// Datasets for training: IDX (MNIST, Fashion-MNIST) and CIFAR readers, transforms, and a seeded,
// prefetching batch loader.
export * from './idx';
export * from './cifar';
export * from './datasets';
export * from './transforms';
export * from './loader';
