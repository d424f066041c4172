"""The small-n bias of the Fréchet distance, measured on real data: the 1,497 training digits are split
at random into a reference of 1,000 and a pool of 497; ``n`` digits drawn from the pool (without
replacement) are compared with the reference's statistics, in the digits classifier's 64-d features.
Both sets come from one distribution, so the true distance is 0 and the reported FD is estimator bias
(plus the reference's own, fixed, share); KID (x 1e3, unbiased: mean 0 here up to its noise) is beside it.

    python -m bench.fid_bias                   # n = 25, 50, 100, 200, 400; 10 draws each

Prints one row per n: mean and standard deviation over draws of FD and of KID, and n * FD (about
constant when the bias falls like 1/n).
"""
from __future__ import annotations

import argparse

import torch

from scoresde.data.datasets import get_image_dataset
from scoresde.data.pipeline import DataSpec
from scoresde.evaluate.features import items_at_centres
from scoresde.evaluate.metrics import digits_classifier, feature_statistics, frechet_distance, kid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="25,50,100,200,400")
    parser.add_argument("--draws", type=int, default=10)
    args = parser.parse_args()
    data = get_image_dataset("digits", split="train")
    spec = DataSpec(name="digits", train=None, test=None, shape=data.shape, num_levels=data.num_levels)
    features = digits_classifier().features(items_at_centres(data.images, spec)).double()
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(features), generator=gen)
    reference, pool = features[order[:1000]], features[order[1000:]]
    mu, sigma = feature_statistics(reference)
    print(f"reference: {len(reference)} training digits; pool: the other {len(pool)}; {features.shape[1]}-d "
          f"digits-classifier features")
    print(f"{'n':>5} {'FD mean':>9} {'FD std':>8} {'n*FD':>7} {'KIDx1e3':>8} {'KID std':>8}")
    for n in (int(s) for s in args.sizes.split(",")):
        fds, kids = [], []
        for _ in range(args.draws):
            part = pool[torch.randperm(len(pool), generator=gen)[:n]]
            fds.append(frechet_distance(*feature_statistics(part), mu, sigma))
            kids.append(1e3 * kid(reference, part, num_subsets=100, subset_size=min(n, 200), generator=gen)[0])
        fd, k = torch.tensor(fds), torch.tensor(kids)
        print(f"{n:>5} {fd.mean():9.4f} {fd.std():8.4f} {n * fd.mean():7.1f} {k.mean():8.3f} {k.std():8.3f}")


if __name__ == "__main__":
    main()
