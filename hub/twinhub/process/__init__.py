"""twinhub.process"""
