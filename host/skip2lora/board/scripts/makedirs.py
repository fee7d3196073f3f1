# Every folder of an absolute path, like os.makedirs(path, exist_ok=True) (boards have no
# os.makedirs).
import os


def makedirs(path):
    d = ''
    for p in path.split('/'):
        if p:
            d += '/' + p
            try:
                os.mkdir(d)
            except OSError:
                pass
