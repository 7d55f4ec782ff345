"""The foundation every other layer stands on, knowing nothing of compression: errors and settings,
paths and scratch folders, data sets (the embedded digits, Fashion-MNIST, image folders), the model zoo,
training and evaluation, statistics, plain words for users and the names of latency engines."""
