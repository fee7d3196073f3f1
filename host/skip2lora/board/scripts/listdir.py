# The names in a board folder, as one repr'd list.
import os


def listdir(path):
    print(repr(os.listdir(path)))
