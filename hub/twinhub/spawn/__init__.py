"""twinhub.spawn"""
