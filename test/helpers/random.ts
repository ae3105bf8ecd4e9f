// Seeded random numbers and random ViT models: scripts/cases/random.ts (scripts import nothing from test/).
export * from '../../scripts/cases/random';
