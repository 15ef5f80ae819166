"""Names, paper links and BibTeX of the methods, backbones and datasets that model cards cite."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reference:
    """A method, backbone family or dataset: its display name, a link, and a BibTeX entry."""

    name: str
    url: str
    bibtex: str


METHODS: dict[str, Reference] = {
    "e2e": Reference("end-to-end backpropagation (E2E)", "", ""),
    "greedy": Reference("Greedy supervised layerwise learning", "https://arxiv.org/abs/1812.11446", """\
@inproceedings{belilovsky2019greedy,
  title={Greedy Layerwise Learning Can Scale to {ImageNet}},
  author={Belilovsky, Eugene and Eickenberg, Michael and Oyallon, Edouard},
  booktitle={Proceedings of the 36th International Conference on Machine Learning (ICML)},
  year={2019},
  eprint={1812.11446},
  archivePrefix={arXiv}
}"""),
    "dgl": Reference("DGL (Decoupled Greedy Learning)", "https://arxiv.org/abs/1901.08164", """\
@inproceedings{belilovsky2020decoupled,
  title={Decoupled Greedy Learning of {CNNs}},
  author={Belilovsky, Eugene and Eickenberg, Michael and Oyallon, Edouard},
  booktitle={Proceedings of the 37th International Conference on Machine Learning (ICML)},
  year={2020},
  eprint={1901.08164},
  archivePrefix={arXiv}
}"""),
    "infopro": Reference("InfoPro", "https://arxiv.org/abs/2101.10832", """\
@inproceedings{wang2021revisiting,
  title={Revisiting Locally Supervised Learning: an Alternative to End-to-end Training},
  author={Wang, Yulin and Ni, Zanlin and Song, Shiji and Yang, Le and Huang, Gao},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2021},
  eprint={2101.10832},
  archivePrefix={arXiv}
}"""),
    "man": Reference("MAN (Momentum Auxiliary Network)", "https://arxiv.org/abs/2407.05623", """\
@inproceedings{su2024momentum,
  title={Momentum Auxiliary Network for Supervised Local Learning},
  author={Su, Junhao and Cai, Changpeng and Zhu, Feiyu and He, Chenghao and Xu, Xiaojie and Guan, Dongzhi and Si, Chenyang},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2024},
  eprint={2407.05623},
  archivePrefix={arXiv}
}"""),
    "mlaan": Reference("MLAAN (Multilaminar Leap Augmented Auxiliary Network)", "https://arxiv.org/abs/2406.16633", """\
@inproceedings{zhang2025mlaan,
  title={{MLAAN}: Scaling Supervised Local Learning with Multilaminar Leap Augmented Auxiliary Network},
  author={Zhang, Yuming and Zhang, Shouxin and Wang, Peizhe and Zhu, Feiyu and Guan, Dongzhi and Su, Junhao and Liu, Jiabin and Cai, Changpeng},
  booktitle={Proceedings of the AAAI Conference on Artificial Intelligence},
  year={2025},
  eprint={2406.16633},
  archivePrefix={arXiv}
}"""),
}

BACKBONES: dict[str, Reference] = {
    "resnet": Reference("ResNet", "https://arxiv.org/abs/1512.03385", """\
@inproceedings{he2016deep,
  title={Deep Residual Learning for Image Recognition},
  author={He, Kaiming and Zhang, Xiangyu and Ren, Shaoqing and Sun, Jian},
  booktitle={Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={770--778},
  year={2016}
}"""),
    "vit": Reference("Vision Transformer", "https://arxiv.org/abs/2010.11929", """\
@inproceedings{dosovitskiy2021image,
  title={An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale},
  author={Dosovitskiy, Alexey and Beyer, Lucas and Kolesnikov, Alexander and Weissenborn, Dirk and Zhai, Xiaohua and Unterthiner, Thomas and Dehghani, Mostafa and Minderer, Matthias and Heigold, Georg and Gelly, Sylvain and Uszkoreit, Jakob and Houlsby, Neil},
  booktitle={International Conference on Learning Representations (ICLR)},
  year={2021}
}"""),
}

DATASETS: dict[str, Reference] = {
    "cifar10": Reference("CIFAR-10", "https://www.cs.toronto.edu/~kriz/cifar.html", """\
@techreport{krizhevsky2009learning,
  title={Learning Multiple Layers of Features from Tiny Images},
  author={Krizhevsky, Alex},
  institution={University of Toronto},
  year={2009}
}"""),
    "svhn": Reference("SVHN (cropped digits)", "http://ufldl.stanford.edu/housenumbers/", """\
@inproceedings{netzer2011reading,
  title={Reading Digits in Natural Images with Unsupervised Feature Learning},
  author={Netzer, Yuval and Wang, Tao and Coates, Adam and Bissacco, Alessandro and Wu, Bo and Ng, Andrew Y.},
  booktitle={NIPS Workshop on Deep Learning and Unsupervised Feature Learning},
  year={2011}
}"""),
    "stl10": Reference("STL-10", "https://cs.stanford.edu/~acoates/stl10/", """\
@inproceedings{coates2011analysis,
  title={An Analysis of Single-Layer Networks in Unsupervised Feature Learning},
  author={Coates, Adam and Ng, Andrew and Lee, Honglak},
  booktitle={Proceedings of the Fourteenth International Conference on Artificial Intelligence and Statistics (AISTATS)},
  year={2011}
}"""),
    "imagenet": Reference("ImageNet-1k", "https://www.image-net.org/", """\
@article{russakovsky2015imagenet,
  title={{ImageNet} Large Scale Visual Recognition Challenge},
  author={Russakovsky, Olga and Deng, Jia and Su, Hao and Krause, Jonathan and Satheesh, Sanjeev and Ma, Sean and Huang, Zhiheng and Karpathy, Andrej and Khosla, Aditya and Bernstein, Michael and Berg, Alexander C. and Fei-Fei, Li},
  journal={International Journal of Computer Vision},
  volume={115},
  number={3},
  pages={211--252},
  year={2015}
}"""),
}


def backbone_reference(arch: str) -> Reference | None:
    """The backbone family of an architecture name (``resnet32_man`` → ResNet), if the cards know it."""
    return next((ref for prefix, ref in BACKBONES.items() if arch.startswith(prefix)), None)
